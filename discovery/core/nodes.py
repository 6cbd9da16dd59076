"""Node ids and edge names: the one place they are written and read.

Node ids: `input`, a query head `a{L}.h{H}`, a key/value head of a grouped graph `a{L}.kv{G}`, an MLP
`m{L}`, `logits`. A reader slot is its node's id with the slot for heads (`a1.h0<q>`, `a1.kv0<k>`) and
the node's id for MLPs and the logits. An edge name is `source->reader` (`a0.h3->a2.h0<v>`,
`a1.h2->m3`, `m3->logits`). Query head h of a layer with `group` query heads per key/value head
belongs to key/value head h // group, and key/value head g feeds query heads g*group .. (g+1)*group-1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NODE = re.compile(r"^(?:(input|logits)|a(\d+)\.(h|kv)(\d+)|m(\d+))$")
_READER = re.compile(r"^(?P<owner>.+?)(?:<(?P<slot>[qkv])>)?$")


@dataclass(frozen=True)
class NodeId:
    """A parsed node id. kind: "input" | "logits" | "attention" (a query head) | "kv_head" | "mlp";
    head: the query head (attention) or the key/value head (kv_head)."""

    kind: str
    layer: int | None = None
    head: int | None = None

    def __str__(self) -> str:
        if self.kind in ("input", "logits"):
            return self.kind
        if self.kind == "mlp":
            return mlp_id(self.layer)
        return kv_id(self.layer, self.head) if self.kind == "kv_head" else head_id(self.layer, self.head)


def head_id(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def kv_id(layer: int, group: int) -> str:
    return f"a{layer}.kv{group}"


def mlp_id(layer: int) -> str:
    return f"m{layer}"


def parse_node(node: str) -> NodeId:
    """The NodeId of a node id; ValueError for anything that is not one exactly as written here
    (`a01.h2` and `a1.h2 ` are not)."""
    m = _NODE.match(node) if isinstance(node, str) else None
    if m is None:
        raise ValueError(f"not a node id: {node!r}")
    special, layer, kind, head, mlp = m.groups()
    if special:
        parsed = NodeId(special)
    elif mlp is not None:
        parsed = NodeId("mlp", int(mlp))
    else:
        parsed = NodeId("kv_head" if kind == "kv" else "attention", int(layer), int(head))
    if str(parsed) != node:  # leading zeros
        raise ValueError(f"not a node id: {node!r}")
    return parsed


def reader_name(owner: str, slot: str) -> str:
    """A reader slot's name: `a1.h0<q>` for a head's slot, the node itself for an MLP or the logits."""
    return owner if slot in ("mlp", "logits") else f"{owner}<{slot}>"


def split_reader(reader: str) -> tuple[str, str | None]:
    """(owner node, slot q/k/v or None) of a reader slot's name."""
    m = _READER.match(reader)
    return m["owner"], m["slot"]


def split_edge(name: str) -> tuple[str, str, str | None]:
    """(source, reader's owner node, slot q/k/v or None) of an edge name."""
    src, _, reader = name.partition("->")
    return (src, *split_reader(reader))


def group_heads(layer: int, group: int, group_size: int) -> list[str]:
    """The query heads of key/value head `group`."""
    return [head_id(layer, h) for h in range(group * group_size, (group + 1) * group_size)]


def node_info(node: str) -> dict:
    """{"id", "kind", "layer", "head"} of a node id (the circuit file's node fields)."""
    n = parse_node(node)
    return {"id": node, "kind": n.kind, "layer": n.layer, "head": n.head}
