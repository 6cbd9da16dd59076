"""Checkpoint sources of a watch: where checkpoints come from, which of them are complete, and the
fingerprint that names each one for good (its idempotency key).

- `toy`: a shipped toy model's training checkpoints (toy:induction's step-000500 ... step-003000).
- `dir`: a directory under a configured model root whose subdirectories are HF checkpoints. A
  checkpoint is complete once its config and weights exist and none of them changed for the quiet
  period, or at once when the watch's marker file is in it. Its fingerprint hashes the names, sizes and
  modification times of those files: a rewritten checkpoint is a new one.
- `hub`: a hub repository's branches and tags (Pythia publishes step1000, step2000, ... as branches),
  listed with huggingface_hub.HfApi().list_repo_refs; the fingerprint is the ref's commit hash, and
  jobs load that commit, so a branch moved later is scanned again as a new checkpoint.

The same model-access rules as jobs apply: directories only under a model root, no `..`, no symlinks
out of a root (service/jobs/models_access.py)."""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field

from discovery.core.errors import UserError
from discovery.io.timeline import step_of

from ..jobs.models_access import HUB_ID, resolve_model

KINDS = ("toy", "dir", "hub")
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
CONFIG = "config.json"


@dataclass(frozen=True)
class Checkpoint:
    name: str  # the directory or ref name: step-001000, step1000
    fingerprint: str  # the commit hash (hub), or the hash of the directory's config and weight files
    model: str  # the job's model.name
    revision: str | None  # the job's model.revision

    @property
    def step(self) -> int | None:
        return step_of(self.name)


@dataclass
class Listing:
    ready: list[Checkpoint] = field(default_factory=list)
    waiting: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint, why it is not taken yet)


# ------------------------------------------------------------------------------------- sources
def resolve_source(source: str, kind: str, roots: list[str]) -> tuple[str, str]:
    """(kind, source as stored) for a watch's source, or a UserError saying why it is refused.
    kind "auto": toy:NAME is a toy model, a directory under a model root is a dir, else a hub id."""
    if kind not in ("auto",) + KINDS:
        raise UserError(f"source kind '{kind}' is not known; use auto, toy, dir or hub")
    if source.startswith("toy:") and kind in ("auto", "toy"):
        resolve_model(source, roots)  # an unknown toy name is refused with the list of known ones
        if not os.path.isdir(_toy_checkpoints(source)):
            raise UserError(f"toy model '{source}' has no training checkpoints to watch")
        return "toy", source
    if kind in ("auto", "dir"):
        found = run_dir(source, roots)
        if found is not None:
            return "dir", source
        if kind == "dir" or os.path.isabs(source) or os.path.isdir(source):
            raise UserError(f"'{source}' is not a directory under a configured model root "
                            f"({', '.join(roots) or 'none configured'}): add the directory that holds it as a model "
                            "root (circuitry scan add --model-root DIR ..., or CIRCUITRY_MODEL_ROOTS; the server that "
                            "runs the jobs needs the same root)")
    if kind == "toy":
        raise UserError(f"'{source}' is not a toy model; toy sources are named toy:NAME")
    if not HUB_ID.match(source) or "/" not in source:
        raise UserError(f"'{source}' is neither toy:NAME, a directory under a model root, nor a hub repository "
                        "id (org/name)")
    return "hub", source


def run_dir(source: str, roots: list[str]) -> str | None:
    """The real path of directory `source` (relative to a root, or absolute inside one), else None."""
    parts = source.replace("\\", "/").split("/")
    if source.startswith("~") or any(p in (".", "..") for p in parts) or any(p == "" for p in parts[1:]):
        raise UserError(f"'{source}' is not allowed: no '..', '.' or empty path components")
    for root in roots:
        real_root = os.path.realpath(root)
        path = os.path.realpath(source if os.path.isabs(source) else os.path.join(real_root, source))
        if (path == real_root or path.startswith(real_root + os.sep)) and os.path.isdir(path):
            return path
    return None


def _toy_checkpoints(name: str) -> str:
    from discovery.model.adapters import toy_model_dir
    return os.path.join(toy_model_dir(name), "checkpoints")


def matches(name: str, pattern: str | None, pattern_kind: str) -> bool:
    if not pattern:
        return True
    if pattern_kind == "regex":
        return re.fullmatch(pattern, name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def check_pattern(pattern: str | None, pattern_kind: str) -> None:
    if pattern and pattern_kind == "regex":
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(f"pattern '{pattern}' is not a valid regular expression: {exc}") from None


# ------------------------------------------------------------------------------------- listing
def list_checkpoints(watch, roots: list[str], *, now: float | None = None) -> Listing:
    """The watch's checkpoints matching its pattern: complete ones (`ready`, in training order) and
    the ones still being written (`waiting`, with the reason). Errors reaching the source raise."""
    now = time.time() if now is None else now
    if watch.source_kind == "hub":
        listing = _hub(watch)
    else:
        if watch.source_kind == "toy":
            base, model_of = _toy_checkpoints(watch.source), (lambda sub: (watch.source, sub))
        else:
            base = run_dir(watch.source, roots)
            if base is None:
                raise UserError(f"the watched directory '{watch.source}' is gone or no longer under a model root")
            model_of = lambda sub: (watch.source.rstrip("/") + "/" + sub, None)  # noqa: E731
        listing = _directory(base, model_of, watch, roots, now)
    listing.ready.sort(key=lambda c: (c.step is None, c.step or 0, c.name))
    return listing


def _directory(base: str, model_of, watch, roots: list[str], now: float) -> Listing:
    out = Listing()
    real_roots = [os.path.realpath(r) for r in roots]
    for sub in sorted(os.listdir(base)):
        path = os.path.join(base, sub)
        # hidden names are the usual temporary names of checkpoints being written (.tmp-step-100)
        if sub.startswith(".") or not os.path.isdir(path) or not matches(sub, watch.pattern, watch.pattern_kind):
            continue
        real = os.path.realpath(path)
        if watch.source_kind == "dir" and not any(real.startswith(r + os.sep) for r in real_roots):
            out.waiting.append((sub, "links outside the model roots; never taken"))
            continue
        files, missing = checkpoint_files(path)
        marked = bool(watch.marker) and os.path.exists(os.path.join(path, watch.marker))
        if missing and not marked:
            out.waiting.append((sub, f"incomplete: {missing}"))
            continue
        if not marked:
            newest = max(os.stat(f).st_mtime for f in files)
            if now - newest < watch.quiet_s:
                out.waiting.append((sub, f"changed {max(0.0, now - newest):.0f}s ago; taken once unchanged for "
                                         f"{watch.quiet_s:g}s" + (f" or when {watch.marker} exists" if watch.marker
                                                                   else "")))
                continue
        model, revision = model_of(sub)
        out.ready.append(Checkpoint(sub, fingerprint(path, files), model, revision))
    return out


def checkpoint_files(path: str) -> tuple[list[str], str | None]:
    """(config and weight files present, what is missing or None). A sharded checkpoint is complete
    only when every shard its index names exists."""
    files = [os.path.join(path, CONFIG)] if os.path.isfile(os.path.join(path, CONFIG)) else []
    weights = sorted({f for g in WEIGHT_GLOBS for f in glob.glob(os.path.join(glob.escape(path), g))})
    missing = [] if files else [CONFIG]
    if not weights:
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    for index in (w for w in weights if w.endswith(".index.json")):
        try:
            with open(index) as fh:
                shards = sorted(set(json.load(fh).get("weight_map", {}).values()))
        except (OSError, ValueError):
            missing.append(f"a readable {os.path.basename(index)}")
            continue
        absent = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
        if absent:
            missing.append(f"shards {', '.join(absent[:3])}" + ("…" if len(absent) > 3 else ""))
    return files + weights, "; ".join(missing) or None


def fingerprint(path: str, files: list[str]) -> str:
    """The checkpoint's name, and the names, sizes and modification times of its config and weights:
    cheap for large weights, and any rewrite changes it (the name: copies made with their times kept
    are still different checkpoints)."""
    h = hashlib.sha256(os.path.basename(os.path.normpath(path)).encode() + b"\0")
    for f in sorted(files):
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _hub(watch) -> Listing:
    import huggingface_hub  # the attribute is looked up per call: tests replace HfApi with a fake

    refs = huggingface_hub.HfApi().list_repo_refs(watch.source, repo_type="model")
    out, seen = Listing(), set()
    named_first = sorted(list(refs.branches or []) + list(refs.tags or []),
                         key=lambda r: (step_of(r.name) is None, r.name))  # step1000 rather than main
    for ref in named_first:
        if not matches(ref.name, watch.pattern, watch.pattern_kind) or ref.target_commit in seen:
            continue
        seen.add(ref.target_commit)  # one commit under two names (main and step143000) is one checkpoint
        out.ready.append(Checkpoint(ref.name, ref.target_commit, watch.source, ref.target_commit))
    return out


__all__ = ["Checkpoint", "Listing", "KINDS", "resolve_source", "run_dir", "list_checkpoints", "checkpoint_files",
           "fingerprint", "matches", "check_pattern"]
