"""`circuitry view`: a circuit, a diff or a timeline as one self-contained HTML file. (`circuitry demo`,
which runs the service, is service/demo.py's.)"""

from __future__ import annotations

import os

from discovery.core.errors import UserError, check_output_path


def register(subparsers) -> None:
    v = subparsers.add_parser("view", help="write a circuit (or a diff, or a timeline) as one self-contained HTML file")
    v.add_argument("circuits", nargs="+", help="circuit JSON file(s); several with --timeline")
    v.add_argument("--diff", default=None, metavar="OTHER", help="show OTHER against the circuit: edges gained and lost")
    v.add_argument("--timeline", action="store_true", help="the circuits are checkpoints: draw their timeline")
    v.add_argument("--out", required=True, help="the HTML file to write")
    v.set_defaults(func=cmd_view)


def _check(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"circuit file '{path}' not found")


def _load(path: str):
    from labeling.schema import LabeledCircuit

    _check(path)
    from discovery.io.export.load import mib_as_circuit

    imported = mib_as_circuit(path)  # a MIB / EAP-IG graph (json or pt) someone else found
    if imported is not None:
        return LabeledCircuit.model_validate(imported.model_dump())
    return LabeledCircuit.load(path)  # reads plain 1.0 circuits too


def cmd_view(args) -> int:
    from .render import render_circuit, render_diff, render_timeline, write_html

    if args.timeline and args.diff:
        raise UserError("give --diff or --timeline, not both")
    if not args.timeline and len(args.circuits) != 1:
        raise UserError("give one circuit file (or --timeline for several checkpoints)")
    check_output_path(args.out, "--out", stdout=True)
    for p in args.circuits + ([args.diff] if args.diff else []):
        _check(p)  # every path before anything loads
    circuits = [_load(p) for p in args.circuits]
    if args.timeline:
        from discovery.io.timeline import timeline

        text = render_timeline(timeline(list(zip(args.circuits, circuits))),
                               title=f"{circuits[0].model.name} · {circuits[0].task.name}")
    elif args.diff:
        text = render_diff(circuits[0], _load(args.diff),
                           names=(os.path.basename(args.circuits[0]), os.path.basename(args.diff)))
    else:
        text = render_circuit(circuits[0], name=os.path.basename(args.circuits[0]))
    if args.out == "-":
        print(text)
        return 0
    print(f"wrote {write_html(args.out, text)}")
    return 0
