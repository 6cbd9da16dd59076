"""`circuitry transcoders train|show`: train transcoders for a model's MLPs; describe a transcoder folder."""

from __future__ import annotations

import json
import os
import sys

from ..core.errors import UserError


def register(subparsers) -> None:
    t = subparsers.add_parser("transcoders", help="train transcoders for a model's MLPs (circuit-tracer's format); "
                                                  "'transcoders show DIR' describes a transcoder folder")
    tsub = t.add_subparsers(dest="transcoders_command", required=True, parser_class=type(t))  # one-line errors too
    p = tsub.add_parser("train", help="train per-layer transcoders on the model's own MLP inputs and outputs")
    p.add_argument("--model", required=True, help="local HF model directory, hub id or toy:NAME")
    p.add_argument("--data", required=True,
                   help="FILE.txt (one text a line), FILE.jsonl (text / input_ids / task rows) or a built-in task name")
    p.add_argument("--out", required=True, help="folder for config.yaml, layer_{i}.safetensors and report.json")
    p.add_argument("--kind", default="plt", choices=["plt", "skip"], help="plt, or skip: with a learned linear skip")
    p.add_argument("--features", type=int, default=256, help="features per layer (default 256)")
    p.add_argument("--activation", default="jumprelu", choices=["relu", "jumprelu", "topk"],
                   help="jumprelu (default), relu or topk (circuit-tracer reads topk files as relu)")
    p.add_argument("--k", type=int, default=8, help="features per token for --activation topk (default 8)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="sparsity coefficient (default: 0.02 jumprelu L0, 0.1 relu L1; unused by topk)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and held-out split (default 0)")
    p.add_argument("--n", type=int, default=None, help="rows of a built-in task (default 1000; both prompts used)")
    p.add_argument("--task-seed", type=int, default=0, help="seed of a built-in task's rows (default 0)")
    p.add_argument("--max-len", type=int, default=128, help="tokens per sequence at most (default 128)")
    p.add_argument("--revision", default=None, help="hub revision of the model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    s = tsub.add_parser("show", help="describe transcoders (a folder, toy:NAME or hub id) and their report")
    s.add_argument("source", help="transcoder folder, toy:NAME or hub id")
    s.add_argument("--model", default=None, help="check the shapes against this model")
    s.set_defaults(func=cmd_show)


def cmd_train(args) -> int:
    from ..core.names import TASK_NAMES, check_model_ref

    check_model_ref(args.model, args.revision)
    if not os.path.isfile(args.data) and args.data not in TASK_NAMES:
        raise UserError(f"--data '{args.data}' is neither a file nor a built-in task ({', '.join(TASK_NAMES)})")
    if args.max_len < 2:
        raise UserError("--max-len must be at least 2")
    from ..features.train import TrainConfig, check_out_dir

    cfg = TrainConfig(kind=args.kind, n_features=args.features, activation=args.activation, k=args.k,
                      sparsity=args.sparsity, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    cfg.check()
    check_out_dir(args.out, args.resume)  # before the model loads
    from ..features.train import train_transcoders
    from ..model.adapters import load_model

    model = load_model(args.model, revision=args.revision, device=args.device)
    report = train_transcoders(model, args.data, args.out, cfg, n=args.n, data_seed=args.task_seed,
                               max_len=args.max_len, resume=args.resume, quiet=args.quiet)
    for row in report["layers"]:
        print(f"layer {row['layer']}: FVU {row['fvu']:.4f}  mean L0 {row['mean_l0']:.2f}  "
              f"dead {row['dead_features']}/{row['n_features']}")
    rep = report["replacement"]
    print(f"all MLPs replaced: KL {rep['kl']:.4f}, top-1 agreement {rep['top1_agreement']:.3f}")
    print(f"wrote {args.out} (config.yaml, layer_*.safetensors, report.json)", file=sys.stderr)
    return 0


def cmd_show(args) -> int:
    from ..features.transcoders import load_transcoders, resolve_source

    model = None
    if args.model:
        from ..model.adapters import load_model

        model = load_model(args.model, device="cpu")
    tc = load_transcoders(args.source, model=model, device="cpu")
    print(f"{args.source}: {tc.extra_repr()}")
    report = os.path.join(resolve_source(args.source), "report.json")
    if os.path.isfile(report):
        with open(report, encoding="utf-8") as f:
            rep = json.load(f)
        for row in rep.get("layers", []):
            print(f"layer {row['layer']}: FVU {row['fvu']:.4f}  mean L0 {row['mean_l0']:.2f}  "
                  f"dead {row['dead_features']}/{row['n_features']}")
    return 0
