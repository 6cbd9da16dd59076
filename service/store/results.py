"""Storing a finished circuit: the JSON artifact once per content hash, and the circuit's nodes,
edges and labels as rows that can be queried."""

from __future__ import annotations

import gzip
import hashlib
import time
import uuid

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from .tables import Artifact, CircuitEdge, CircuitNode, CircuitRow, Label

MEDIA_TYPE = "application/json"


def put_artifact(s: Session, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    dialect = s.get_bind().dialect.name
    values = dict(sha256=digest, media_type=MEDIA_TYPE, encoding="gzip", size=len(content),
                  content=gzip.compress(content, compresslevel=6), created_at=time.time())
    if dialect in ("sqlite", "postgresql"):  # the same content stored by two jobs at once: keep one
        mod = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
        s.execute(mod.insert(Artifact).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))
    elif s.get(Artifact, digest) is None:
        s.add(Artifact(**values))
    return digest


def get_artifact(s: Session, digest: str) -> bytes | None:
    row = s.get(Artifact, digest)
    if row is None:
        return None
    return gzip.decompress(row.content) if row.encoding == "gzip" else row.content


def store_circuit(s: Session, job_id: str, circuit: dict, content: bytes, labels: list[dict] | None) -> str:
    """Insert the circuit of job `job_id` (its JSON `content` and the parsed `circuit`); returns its id."""
    digest = put_artifact(s, content)
    model, task, method, selection = circuit["model"], circuit["task"], circuit["method"], circuit["selection"]
    metrics = circuit.get("metrics") or {}
    circuit_id = str(uuid.uuid4())
    s.add(CircuitRow(
        id=circuit_id, job_id=job_id, model=model["name"], revision=model.get("revision"),
        model_type=model.get("model_type", ""), task=task["name"], task_hash=task["content_hash"],
        method=method["name"], params={"method": method.get("params", {}), "selection": selection},
        code_version=circuit.get("code_version", ""), n_edges=int(metrics.get("n_edges", 0)),
        n_nodes=int(metrics.get("n_nodes", 0)), faithfulness=metrics.get("faithfulness"),
        labeled=bool(labels), artifact_sha256=digest, created_at=time.time()))
    s.flush()  # the circuit row before the rows that reference it
    nodes = [dict(circuit_id=circuit_id, node=n["id"], kind=n["kind"], layer=n.get("layer"), head=n.get("head"),
                  in_circuit=bool(n.get("in_circuit"))) for n in circuit["nodes"]]
    if nodes:
        s.execute(insert(CircuitNode), nodes)
    edges = [dict(circuit_id=circuit_id, name=e["name"], source=e["source"], target=e["target"], slot=e["slot"],
                  score=e.get("score")) for e in circuit["edges"] if e.get("in_circuit")]
    if edges:
        s.execute(insert(CircuitEdge), edges)
    if labels:
        s.execute(insert(Label), [dict(circuit_id=circuit_id, component=str(r.get("component")),
                                       label=r.get("label"), role_tags=list(r.get("role_tags") or []),
                                       status=r.get("status"), record=r) for r in labels])
    return circuit_id


def circuits_with_node(s: Session, node: str, *, model: str | None = None) -> list[str]:
    """Ids of the circuits that have `node` in the circuit (optionally of one model)."""
    q = (select(CircuitRow.id).join(CircuitNode, CircuitNode.circuit_id == CircuitRow.id)
         .where(CircuitNode.node == node, CircuitNode.in_circuit.is_(True)))
    if model:
        q = q.where(CircuitRow.model == model)
    return list(s.scalars(q))
