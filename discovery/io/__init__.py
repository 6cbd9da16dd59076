"""The io layer: a circuit file in other tools' formats and MIB graphs read back (export/), two circuits
compared (diff), circuits across checkpoints (timeline). Imports the layers below it, never the CLI.
(A circuit in a notebook is core/notebook.py: the Circuit's own methods use it.)"""
