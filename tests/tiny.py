"""Tiny random-weight models of each supported family, built from configs in code (nothing downloaded)."""

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

VOCAB = 97


def config(family: str, n_layers: int = 2, **overrides):
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, n_positions=64, n_embd=32, n_layer=n_layers, n_head=4,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    elif family == "neox":  # parallel residual, partial rotary
        cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, use_parallel_residual=True,
                            rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0)
    elif family == "neox-seq":  # NeoX with sequential residual
        cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, use_parallel_residual=False,
                            rotary_pct=0.25)
    elif family == "llama":  # grouped-query attention: 4 query heads over 2 key/value heads
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    elif family == "qwen2":  # biases on q/k/v, GQA
        cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64)
    elif family == "mistral":  # sliding-window attention shorter than the test prompts
        cfg = MistralConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                            sliding_window=3)
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def build(family: str, n_layers: int = 2, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(family, n_layers, **overrides))
    # Random init is near-silent; scale weights so every component matters to the output.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    return model.eval()


FAMILIES = ["gpt2", "neox", "neox-seq", "llama", "qwen2", "mistral"]
