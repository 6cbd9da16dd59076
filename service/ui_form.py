"""The /ui submit form's fields, read from the job model itself (service.jobs.spec.JobRequest's JSON
schema, the body POST /v1/jobs accepts), so the form offers every option a job takes and a new option
appears in it without a change here.

Each field is {path, name, kind, group, default, options, min, max, description, applies}:
- path: where the value goes in the job body ("method.steps", "labeling.options.seed");
- name: the form control's name: the leaf name, or a longer one where leaves share a name
  (model.name -> "model", method.name -> "method", task.builtin -> "task", labeling.backend ->
  "labeling", labeling.options.seed -> "label_seed", task.name -> "task_name");
- kind: enum | bool (a checkbox) | tribool (default / true / false) | int | float | floats (a number,
  or several separated by commas) | strings (comma-separated) | text;
- applies: the methods the field means something for (None: all), from the rules the options check
  (discovery/pipeline/options.py): the form hides a field that does not apply to the chosen method.
The task's inline rows are not a field: the form reads them from a JSONL file (one row per line)."""

from __future__ import annotations

from discovery.core.names import ACDC_METHODS, ALL_METHODS, AUTO_METHOD, LEARNED_METHODS

NAMES = {"model.name": "model", "method.name": "method", "task.builtin": "task", "labeling.backend": "labeling",
         "labeling.options.seed": "label_seed", "task.name": "task_name"}
SKIP = {"task.rows"}  # from the uploaded file
SCORING = tuple(m for m in ALL_METHODS if m not in ACDC_METHODS and m != AUTO_METHOD)
APPLIES = {
    "method.tau": ACDC_METHODS, "method.candidates": ("eap-ig+acdc",),
    "method.sparsity": LEARNED_METHODS, "method.lam": LEARNED_METHODS, "method.train_steps": LEARNED_METHODS,
    "method.max_verify": (AUTO_METHOD,),
    "selection.top_n": SCORING, "selection.threshold": SCORING, "selection.greedy": SCORING,
    "selection.target": tuple(m for m in ALL_METHODS if m not in ACDC_METHODS),
}
ORDER = ("model", "task", "method", "selection", "labeling", "callback_url")


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return schema["$defs"][ref.rsplit("/", 1)[1]] if ref else node


def _field(path: str, prop: dict) -> dict:
    choices = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    nullable = "anyOf" in prop and len(choices) < len(prop["anyOf"])
    first = choices[0] if choices else {}
    kind, options = "text", None
    if "enum" in first:
        kind, options = "enum", list(first["enum"])
    elif first.get("type") == "boolean":
        kind = "tribool" if nullable else "bool"
    elif first.get("type") == "integer":
        kind = "int"
    elif first.get("type") == "number":
        kind = "float"
    elif first.get("type") == "array":
        kind = "floats" if first.get("items", {}).get("type") == "number" else "strings"
    bounds = first.get("items", first) if kind == "floats" else first
    low = bounds.get("minimum", bounds.get("exclusiveMinimum"))
    high = bounds.get("maximum", bounds.get("exclusiveMaximum"))
    return {"path": path, "name": NAMES.get(path, path.rsplit(".", 1)[-1]), "kind": kind, "group": path.split(".")[0],
            "default": prop.get("default"), "nullable": nullable, "options": options, "min": low, "max": high,
            "description": prop.get("description") or first.get("description") or "",
            "applies": list(APPLIES[path]) if path in APPLIES else None}


def form_fields(model=None) -> list[dict]:
    """The fields of `model`'s JSON schema (default: the job request), leaves only, in body order."""
    if model is None:
        from .jobs.spec import JobRequest as model
    schema = model.model_json_schema()
    out: list[dict] = []

    def walk(prefix: str, node: dict) -> None:
        for key, prop in _resolve(schema, node).get("properties", {}).items():
            path = f"{prefix}{key}"
            target = _resolve(schema, prop)
            if "properties" in target:
                walk(path + ".", target)
            elif path not in SKIP:
                out.append(_field(path, prop))
    walk("", schema)
    out.sort(key=lambda f: ORDER.index(f["group"]) if f["group"] in ORDER else len(ORDER))
    return out


def leaf_paths(model=None) -> list[str]:
    """Every leaf of the job body (the form's fields, and the rows it reads from a file)."""
    return [f["path"] for f in form_fields(model)] + sorted(SKIP)
