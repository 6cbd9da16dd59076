"""Timelines keep each checkpoint's warnings and plot the signed behaviour: a point whose circuit says
"no behaviour" / "behaviour within noise" carries that warning in the timeline (discovery.io.timeline), in
`circuitry timeline` and `circuitry scan timeline` text, in the chart (a hollow red marker named by the
warning) and in the API (GET /v1/watches/{id}/timeline, every point as its stored circuit says); the
behaviour is d * (clean - corrupted), negative when the corrupted prompts score better."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from discovery.cli import main
from discovery.model.metrics import METRICS
from discovery.pipeline.sanity import behaviour_warnings
from discovery.io.timeline import timeline, timeline_figure
from service_helpers import make_model_root, settings, wait_for
from test_diff import graph_and_info, make  # noqa: F401  (fixture and hand-made circuits)


def _warned(metric: str, b) -> list[str]:
    """sanity.py's own warnings for per-example behaviours b (the wording a real circuit carries)."""
    return behaviour_warnings(SimpleNamespace(metric=METRICS[metric]), np.asarray(b, float))


def at(graph, info, revision, metric, clean, corrupted, faithfulness, warnings):
    keep = np.zeros(graph.n_edges, bool)
    keep[[graph.edge_index[e] for e in ("input->m0", "m0->logits")]] = True
    c = make(graph, info, keep, np.zeros(graph.n_edges), faithfulness)
    c.model = c.model.model_copy(update={"revision": revision})
    c.metrics = c.metrics.model_copy(update={"metric": metric, "clean": clean, "corrupted": corrupted})
    c.method = c.method.model_copy(update={"params": {"metric": metric}})
    c.warnings = warnings
    return c


@pytest.fixture
def checkpoints(graph_and_info):  # noqa: F811
    """Three checkpoints as in the report: two flagged with large faithfulness, one healthy; one with a
    negative behaviour (the corrupted prompts score higher) and one on KL (lower is better)."""
    graph, info = graph_and_info
    no = _warned("logit_diff", [-0.9, -0.5])
    noise = _warned("logit_diff", [0.3, -0.25, 0.1])
    assert no[0].startswith("no behaviour") and noise[0].startswith("behaviour within noise")
    return [at(graph, info, "step-100", "logit_diff", -0.2, 0.5, 1.196, no),
            at(graph, info, "step-200", "logit_diff", 0.35, 0.30, 1.370, noise),
            at(graph, info, "step-300", "logit_diff", 6.0, -1.0, 0.93, [])]


def test_points_carry_warnings_and_signed_behaviour(checkpoints, graph_and_info):  # noqa: F811
    points = timeline([(f"c{i}", c) for i, c in enumerate(checkpoints)])
    assert [p.warnings for p in points] == [c.warnings for c in checkpoints]
    assert [p.flags for p in points] == [["no behaviour"], ["behaviour within noise"], []]
    assert [p.behaviour for p in points] == pytest.approx([-0.7, 0.05, 7.0])  # clean - corrupted, signed
    graph, info = graph_and_info
    kl = at(graph, info, "step-1", "kl", 0.0, 1.5, 0.8, [])
    (p,) = timeline([("k", kl)])
    assert p.behaviour == pytest.approx(1.5)  # lower is better: corrupted - clean, positive when the task is done
    assert json.loads(points[0].model_dump_json())["warnings"] == checkpoints[0].warnings


def test_chart_plots_signed_behaviour_and_marks_warnings(checkpoints):
    import matplotlib.pyplot as plt

    points = timeline([(None, c) for c in checkpoints])
    fig = timeline_figure(points, "t")
    try:
        green = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_color() == "tab:green" and len(ln.get_xdata()) == 3]
        assert len(green) == 1
        assert list(green[0].get_ydata()) == pytest.approx([-0.7, 0.05, 7.0])
        marked = [c.get_offsets().tolist() for ax in fig.axes for c in ax.collections]
        got = sorted(map(tuple, sum(marked, [])))
        assert np.allclose(got, sorted([(100, -0.7), (100, 1.196), (200, 0.05), (200, 1.37)]))
        names = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert names.count("no behaviour") == 2 and names.count("behaviour within noise") == 2
    finally:
        plt.close(fig)


def test_cli_timeline_text_flags_each_point(checkpoints, tmp_path, capsys):
    files = []
    for c in checkpoints:
        c.save(tmp_path / f"{c.model.revision}.json")
        files.append(str(tmp_path / f"{c.model.revision}.json"))
    assert main(["timeline", *files, "--chart", str(tmp_path / "t.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "faithfulness 1.196 [warning: no behaviour]" in lines[0] and "behaviour (logit_diff) -0.700" in lines[0]
    assert "faithfulness 1.370 [warning: behaviour within noise]" in lines[1]
    assert "warning" not in lines[2] and "+7.000" in lines[2]


# ----------------------------------------------------------------------------------- through the service
def _dead_checkpoint(path: str) -> None:
    """A checkpoint whose every weight is zero: its logits are the same for every prompt, so clean and
    corrupted score the same and sanity.py says "no behaviour"."""
    import tiny

    model = tiny.build("gpt2")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    model.save_pretrained(path)


def test_service_timeline_points_carry_their_circuits_warnings(tmp_path, capsys):
    from conftest import token_rows
    from service.server import BackgroundServer, build_app
    from service.store.db import Database
    from service.store.tokens import create_token

    root = make_model_root(tmp_path)
    _dead_checkpoint(os.path.join(root, "run", "step-1"))
    shutil.copytree(os.path.join(root, "tiny-gpt2"), os.path.join(root, "run", "step-2"))
    s = settings(tmp_path, root)
    db = Database(s.resolved_database_url())
    db.migrate()
    _, secret = create_token(db, "tl")
    server = BackgroundServer(build_app(s, dispatcher=True, db=db)).start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60) as client:
            body = {"source": "run", "tasks": [{"rows": token_rows(n=6), "name": "toks"}], "method": {"name": "eap"},
                    "selection": {"top_n": 10}, "interval_s": 3600, "quiet_s": 0}
            wid = client.post("/v1/watches", json=body).json()["id"]
            report = client.post(f"/v1/watches/{wid}/run").json()
            assert [x["checkpoint"] for x in report["submitted"]] == ["step-1", "step-2"]
            for x in report["submitted"]:
                assert wait_for(client, x["job_id"])["status"] == "succeeded"
            (task,) = client.get(f"/v1/watches/{wid}/timeline").json()["tasks"]
            points = task["points"]
            assert [p["revision"] for p in points] == ["step-1", "step-2"]
            for p in points:
                stored = client.get(f"/v1/circuits/{p['circuit_id']}").json()
                assert p["warnings"] == stored["warnings"]
                m = stored["metrics"]
                assert p["behaviour"] == pytest.approx(m["clean"] - m["corrupted"])  # logit_diff: higher is better
            assert points[0]["warnings"] and points[0]["warnings"][0].startswith("no behaviour")
    finally:
        server.stop()
    assert main(["scan", "--database-url", s.database_url, "timeline", wid]) == 0
    out = capsys.readouterr().out
    (dead,) = [line for line in out.splitlines() if "step-1" in line]
    assert "[warning: no behaviour" in dead  # then "; empty circuit" (nothing kept)
