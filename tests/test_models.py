import pytest
import torch
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
from transformers import BertConfig, PreTrainedTokenizerFast

import tiny
from discovery import UnsupportedModelError, UserError, load_model


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_load_model_from_a_local_directory(tmp_path, family):
    model = tiny.build(family)
    model.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.tokenizer is None and lm.vocab_size == tiny.VOCAB
    assert lm.adapter.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    ids = torch.randint(0, tiny.VOCAB, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(lm.hf_model(ids).logits, model(ids).logits)
    assert not any(p.requires_grad for p in lm.hf_model.parameters())


def test_load_model_with_dtype_device_and_tokenizer(tmp_path):
    tiny.build("llama").save_pretrained(tmp_path)
    tok = Tokenizer(tok_models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), dtype="bfloat16", device="cpu")
    assert lm.adapter.dtype == torch.bfloat16 and lm.tokenizer is not None
    assert lm.adapter.n_kv_heads == 2 and lm.config_hash() == load_model(str(tmp_path)).config_hash()


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'bert' is not supported; supported: gpt2.*llama.*qwen2.*mistral"):
        load_model(str(tmp_path))


def test_missing_directory_and_bad_dtype_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="config"):
        load_model(str(tmp_path))  # exists but has no config.json
    tiny.build("gpt2").save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match="unknown dtype 'float8'"):
        load_model(str(tmp_path / "m"), dtype="float8")
