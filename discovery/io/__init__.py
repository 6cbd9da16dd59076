"""The io layer: a circuit file in other tools' formats and MIB graphs read back (export/), two circuits
compared (diff), circuits across checkpoints (timeline), a circuit in a notebook (notebook). Imports the
layers below it, never the CLI."""
