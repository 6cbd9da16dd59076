"""Write a small GPT-2-architecture model (random weights, fixed seed) with a locally built tokenizer,
and a text task for it, so `make run` works with no download. The trained toy models with known
mechanisms replace this once the task-library issue lands."""

import argparse
import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

NAMES = ["Mary", "John", "Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi"]
PLACES = ["store", "park", "school", "office", "beach", "garden"]
OBJECTS = ["drink", "book", "ball", "key", "letter", "gift"]
WORDS = ["<pad>", "When", "and", "went", "to", "the", ",", "gave", "a", "."] + NAMES + PLACES + OBJECTS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".cache/example")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>").save_pretrained(model_dir)

    torch.manual_seed(args.seed)
    cfg = GPT2Config(vocab_size=len(WORDS), n_positions=32, n_embd=64, n_layer=4, n_head=4,
                     bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(model_dir)

    rng = random.Random(args.seed)
    with open(out / "ioi.jsonl", "w") as f:
        for _ in range(args.rows):
            io, s, third = rng.sample(NAMES, 3)
            place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
            clean = f"When {io} and {s} went to the {place} , {s} gave a {obj} to"
            corrupted = f"When {io} and {s} went to the {place} , {third} gave a {obj} to"
            f.write(json.dumps({"clean": clean, "corrupted": corrupted, "answer": io, "wrong": s}) + "\n")
    print(f"wrote {model_dir} and {out / 'ioi.jsonl'}")


if __name__ == "__main__":
    main()
