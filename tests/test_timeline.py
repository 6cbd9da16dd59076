"""Timelines of circuits across checkpoints: training order, entered/left components, the chart, the CLI."""

import json

import numpy as np
import pytest

from discovery.cli import main
from discovery.io.timeline import plot_timeline, step_of, timeline
from test_diff import graph_and_info, make  # noqa: F401  (fixture and hand-made circuits)


def at(graph, info, revision, edges, faithfulness, clean, labels=()):
    keep = np.zeros(graph.n_edges, bool)
    keep[[graph.edge_index[e] for e in edges]] = True
    c = make(graph, info, keep, np.zeros(graph.n_edges), faithfulness, labels=labels)
    c.model = c.model.model_copy(update={"revision": revision})
    c.metrics = c.metrics.model_copy(update={"clean": clean, "corrupted": -1.0})
    return c


def test_step_parsing():
    assert [step_of(r) for r in ("step-000500", "step1000", "ckpt_3", "main", None)] == [500, 1000, 3, None, None]


def test_timeline_orders_by_step_and_tracks_components(graph_and_info, tmp_path):  # noqa: F811
    graph, info = graph_and_info
    late = at(graph, info, "step-002000", ["input->a0.h1<v>", "a0.h1->a1.h2<k>", "a1.h2->logits"], 0.9, 9.0, labels=[
        {"component": "a0.h1", "role_tags": ["previous_token"]}, {"component": "a1.h2", "role_tags": ["induction"]},
        {"component": "m0", "role_tags": ["other"]}])
    early = at(graph, info, "step-000500", ["input->m0", "m0->logits"], 0.2, 1.0)
    middle = at(graph, info, "step-001000", ["input->a0.h1<v>", "a0.h1->logits"], 0.5, 3.0)
    points = timeline([("late", late), ("early", early), ("middle", middle)])
    assert [p.step for p in points] == [500, 1000, 2000]
    assert [p.circuit_id for p in points] == ["early", "middle", "late"]
    assert points[0].entered == ["m0"] and points[0].left == []
    assert points[1].entered == ["a0.h1"] and points[1].left == ["m0"]
    assert points[2].entered == ["a1.h2"] and points[2].left == []
    assert [p.n_edges for p in points] == [2, 2, 3] and points[2].clean_metric == 9.0
    assert [p.behaviour for p in points] == [2.0, 4.0, 10.0]
    assert points[2].roles == {"induction": ["a1.h2"], "previous_token": ["a0.h1"]} and points[0].roles == {}
    png = plot_timeline(points, tmp_path / "t.png", title="toy")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_timeline(graph_and_info, tmp_path, capsys):  # noqa: F811
    graph, info = graph_and_info
    for rev, edges in (("step-20", ["input->m0", "m0->logits"]), ("step-3", ["input->m1", "m1->logits"])):
        at(graph, info, rev, edges, 0.5, 1.0).save(tmp_path / f"{rev}.json")
    files = [str(tmp_path / "step-20.json"), str(tmp_path / "step-3.json")]
    assert main(["timeline", *files, "--json", "--chart", str(tmp_path / "c.png")]) == 0
    points = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["revision"] for p in points] == ["step-3", "step-20"] and points[1]["entered"] == ["m0"]
    assert (tmp_path / "c.png").exists()
    other = at(graph, info, "step-40", ["input->m0", "m0->logits"], 0.5, 1.0)
    other.task = other.task.model_copy(update={"content_hash": "different"})
    other.save(tmp_path / "other.json")
    assert main(["timeline", *files, str(tmp_path / "other.json")]) == 2
    assert "different tasks" in capsys.readouterr().err
