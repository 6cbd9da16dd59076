"""IOI roles on toy:ioi (a report, not a timing): every head of the model labeled by the heuristic
(labeling/ioi.py's role tests), beside what the HF model itself shows without labeling's code: the
attention from the last token (END) on the indirect object (IO) and on the subject's second copy
(S2) on the clean and the corrupted prompts, and the loss of logit(IO) - logit(S) when the head's
output (its c_proj input slice) is replaced by its mean over every position (mean ablation, HF hook).

    PYTHONPATH=. python benchmarks/ioi_roles.py [--n 64] [--seed 1]

Task rows: the built-in `ioi` task (n rows, seed); labeling uses the even rows as evidence and the odd
ones held out; the HF checks use the even rows."""

from __future__ import annotations

import argparse

import torch

from discovery import load_model
from discovery.model.tasks import iter_batches
from discovery.task_library import build_task
from discovery.toy.ground_truth import attention_patterns
from labeling import label_circuit


def logit_diff(hf, ids, batch, hook_layer=None, hook=None) -> torch.Tensor:
    handle = hf.transformer.h[hook_layer].attn.c_proj.register_forward_pre_hook(hook) if hook else None
    try:
        lg = hf(ids).logits
    finally:
        if handle:
            handle.remove()
    lg = lg[torch.arange(len(ids)), batch.clean_last]
    return (lg.gather(-1, batch.answers[:, :1]) - lg.gather(-1, batch.wrongs[:, :1]))[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    model = load_model("toy:ioi", device="cpu")
    task = build_task("ioi", tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=args.n, seed=args.seed)
    hf, cfg = model.hf_model, model.hf_model.config
    n_layers, n_heads = cfg.n_layer, cfg.n_head
    heads = [f"a{layer}.h{h}" for layer in range(n_layers) for h in range(n_heads)]
    from labeling_helpers import hand_circuit  # tests/ on the path: a circuit of every head
    circuit = hand_circuit(model, task, [f"{n}->logits" for n in heads])
    labeled = {r.component: r for r in label_circuit(circuit, model, task, components=heads, progress=False).labels}

    torch.set_grad_enabled(False)  # labeling is done; the HF checks need no gradients
    batch = next(iter(iter_batches(task.subset(list(range(0, len(task), 2))), len(task))))
    last = batch.clean_last
    idx = torch.arange(len(last))
    att = attention_patterns(hf, batch.clean)
    att_c = attention_patterns(hf, batch.corrupted)
    ids = batch.clean
    before = torch.arange(ids.shape[1])[None] < last[:, None]
    io = (ids == batch.answers[:, :1]) & before
    s = (ids == batch.wrongs[:, :1]) & before
    s2_pos = torch.where(s, torch.arange(ids.shape[1])[None], -1).max(-1).values
    dh = cfg.n_embd // n_heads
    zs = {}
    hooks = [hf.transformer.h[i].attn.c_proj.register_forward_pre_hook(
        lambda _m, a, i=i: zs.__setitem__(i, a[0].clone())) for i in range(n_layers)]
    base = logit_diff(hf, ids, batch)
    for h in hooks:
        h.remove()
    real = before | (torch.arange(ids.shape[1])[None] == last[:, None])
    print(f"toy:ioi, task ioi n={args.n} seed={args.seed}; behaviour logit(IO) - logit(S) = {float(base.mean()):.2f}")
    print("head   | label [tags] status | HF: END->IO, END->S2 (corrupted), ablation loss")
    for node in heads:
        layer, h = int(node[1]), int(node.split(".h")[1])
        end, end_c = att[layer][idx, h, last], att_c[layer][idx, h, batch.corrupted_last]
        to_io = float((end * io).sum(-1).mean())
        to_s2, to_s2_c = float(end[idx, s2_pos].mean()), float(end_c[idx, s2_pos].mean())
        mean = zs[layer][..., h * dh:(h + 1) * dh][real].mean(0)

        def ablate(_m, a, h=h, mean=mean):
            x = a[0].clone()
            x[..., h * dh:(h + 1) * dh] = mean
            return (x,)
        loss = float((base - logit_diff(hf, ids, batch, layer, ablate)).mean())
        r = labeled[node]
        print(f"{node:6} | {r.label} [{', '.join(r.role_tags)}] {r.status} | {to_io:.2f}, {to_s2:.2f} ({to_s2_c:.2f}), "
              f"{loss:+.2f}")


if __name__ == "__main__":
    main()
