"""HTML for the viewer. A standalone page inlines the stylesheet, the script and the data, so the
file opens from disk with nothing fetched; a served page (/ui) links /ui/static/* and carries only
the page's configuration (what to fetch), never data."""

from __future__ import annotations

import html
import json
import math
from functools import lru_cache
from pathlib import Path

STATIC = Path(__file__).parent / "static"
ASSETS = {"viewer.js": "text/javascript; charset=utf-8", "viewer.css": "text/css; charset=utf-8",
          "jobs.js": "text/javascript; charset=utf-8"}  # jobs.js: the /ui job pages (served pages only)


@lru_cache(maxsize=None)
def asset(name: str) -> str:
    if name not in ASSETS:
        raise KeyError(name)
    return (STATIC / name).read_text(encoding="utf-8")


def _finite(obj):
    """NaN and infinities as null: JSON.parse rejects them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def script_json(obj) -> str:
    """JSON safe inside <script>: '<', '>' and '&' escaped so no string (a label, a token) can close
    the element; U+2028/2029 escaped for older parsers."""
    text = json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text


def page(config: dict, *, title: str, standalone: bool) -> str:
    if standalone:
        js = asset("viewer.js")
        if "</script" in js.lower():  # would end the inline element early
            raise ValueError("viewer.js must not contain '</script'")
        head = f"<style>\n{asset('viewer.css')}</style>"
        tail = f"<script>\n{js}</script>"
    else:
        head = '<link rel="stylesheet" href="/ui/static/viewer.css">'
        tail = '<script src="/ui/static/jobs.js"></script>\n<script src="/ui/static/viewer.js"></script>'
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<link rel="icon" href="data:,">\n'  # no /favicon.ico request (a 404 in the console)
            f"<title>{html.escape(title)}</title>\n{head}\n</head>\n<body>\n<div id=\"app\"></div>\n"
            f'<script type="application/json" id="circuitry-config">{script_json(config)}</script>\n'
            f"{tail}\n</body>\n</html>\n")


def _plain(obj) -> dict:
    """A circuit (pydantic model, dict or JSON text) as plain JSON data."""
    if isinstance(obj, (str, bytes)):
        return json.loads(obj)
    if hasattr(obj, "model_dump"):
        return json.loads(obj.model_dump_json())
    return obj


def _title(c: dict) -> str:
    rev = f"@{c['model']['revision']}" if c.get("model", {}).get("revision") else ""
    return f"{c['model']['name']}{rev} · {c['task']['name']} · {c['method']['name']}"


def render_circuit(circuit) -> str:
    c = _plain(circuit)
    return page({"mode": "circuit", "data": {"circuit": c}}, title=f"circuit: {_title(c)}", standalone=True)


def render_diff(a, b, names: tuple[str, str] = ("A", "B")) -> str:
    ca, cb = _plain(a), _plain(b)
    return page({"mode": "diff", "data": {"a": ca, "b": cb, "names": list(names)}},
                title=f"diff: {names[0]} -> {names[1]}", standalone=True)


def render_timeline(points, title: str = "Circuit timeline") -> str:
    """`points`: discovery.io.timeline.TimelinePoint objects (or their dicts)."""
    data = [json.loads(p.model_dump_json()) if hasattr(p, "model_dump_json") else p for p in points]
    return page({"mode": "timeline", "data": {"points": data, "title": title}}, title=title, standalone=True)


def write_html(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
