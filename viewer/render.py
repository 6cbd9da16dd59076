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


MAX_SLIDER = 1000  # viewer.js's MAX_SLIDER: the edge slider reaches max(circuit size, this) edges


def model_name(name: str) -> str:
    """A model's name as the page shows it: a local path's last part (the title should not carry a
    machine's directory layout), a hub id as it is."""
    name = str(name or "")
    if name.startswith(("/", "./", "../", "~")):
        return name.rstrip("/").rsplit("/", 1)[-1] or name
    return name


def _title(c: dict) -> str:
    rev = f"@{c['model']['revision']}" if c.get("model", {}).get("revision") else ""
    return f"{model_name(c['model']['name'])}{rev} · {c['task']['name']} · {c['method']['name']}"


def page_circuit(c: dict, *, others: bool = True) -> dict:
    """The circuit as a page embeds it: its own edges and, with `others`, the strongest others the slider
    can reach (MAX_SLIDER minus the circuit's; by |score|), in file order, so the page's size grows with
    the circuit, not with the graph's unused edges. `n_graph_edges` keeps the graph's edge count."""
    edges = c.get("edges") or []
    inside = sum(1 for e in edges if e.get("in_circuit"))
    room = max(0, MAX_SLIDER - inside) if others else 0
    scored = [i for i, e in enumerate(edges) if not e.get("in_circuit") and isinstance(e.get("score"), (int, float))
              and math.isfinite(e["score"])]
    keep = set(sorted(scored, key=lambda i: -abs(edges[i]["score"]))[:room])
    out = dict(c)
    out["edges"] = [e for i, e in enumerate(edges) if e.get("in_circuit") or i in keep]
    out["n_graph_edges"] = (c.get("positions") or {}).get("n_edges") or len(edges)
    return out


def render_circuit(circuit, name: str | None = None) -> str:
    """The circuit's page; `name` (its file's name) leads the title."""
    c = _plain(circuit)
    title = f"{name} · {_title(c)}" if name else f"circuit: {_title(c)}"
    return page({"mode": "circuit", "data": {"circuit": page_circuit(c)}}, title=title, standalone=True)


def render_diff(a, b, names: tuple[str, str] = ("A", "B")) -> str:
    ca, cb = (page_circuit(_plain(x), others=False) for x in (a, b))
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
