"""The circuit viewer: one page (vanilla JS + SVG) that draws a circuit, a diff of two circuits or a
timeline of checkpoints, either as a self-contained HTML file (`circuitry view`) or under /ui."""

from .render import render_circuit, render_diff, render_timeline, write_html

__all__ = ["render_circuit", "render_diff", "render_timeline", "write_html"]
