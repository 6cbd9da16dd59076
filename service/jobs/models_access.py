"""Which models a job may load: shipped toy models, hub ids, and directories under the configured
model roots. Nothing else: no absolute paths outside a root, no `..`, no symlinks out of a root, and
(in discovery.model.adapters.load_model) never remote code."""

from __future__ import annotations

import os
import re

from discovery.core.errors import UserError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def resolve_model(name: str, roots: list[str]) -> str:
    """What to pass to load_model for the requested model `name`; a UserError says why it is refused."""
    if name.startswith("toy:"):
        from discovery.core.names import toy_model_dir
        toy_model_dir(name)  # an unknown toy name is refused now, with the list of known ones
        return name
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name):
        parts = parts[1:]  # /root/run/step-1: an absolute path, allowed when it is inside a model root
    if any(p in ("", ".", "..") for p in parts) or name.startswith("~"):
        raise UserError(f"model '{name}' is not allowed: give a hub id, a toy model (toy:NAME) or a directory "
                        "name under a model root, without '..', '.' or empty path components")
    for root in roots:
        found = _under_root(name, root)
        if found:
            return found
    if os.path.isabs(name):
        raise UserError(f"model '{name}' is not under a configured model root "
                        f"({', '.join(roots) or 'none configured: set CIRCUITRY_MODEL_ROOTS'})")
    if HUB_ID.match(name):
        if os.path.exists(name):  # load_model would read this relative path instead of the hub
            raise UserError(f"model '{name}' names a local path relative to the server, not under a model root; "
                            "move it under a model root")
        return name
    raise UserError(f"model '{name}' is neither a hub id (org/name) nor a directory under a model root "
                    f"({', '.join(roots) or 'none configured: set CIRCUITRY_MODEL_ROOTS'})")


def _under_root(name: str, root: str) -> str | None:
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(name if os.path.isabs(name) else os.path.join(real_root, name))
    inside = candidate == real_root or candidate.startswith(real_root + os.sep)
    if inside and os.path.isfile(os.path.join(candidate, "config.json")):
        return candidate
    return None
