"""`circuitry discover --label`: the circuit file gains labels (same schema version line), and the edges stay as found."""

from discovery.core.circuit import SCHEMA_VERSION
import json

from discovery.cli import main


def test_discover_with_label(tmp_path, capsys):
    out = tmp_path / "c.json"
    code = main(["discover", "--model", "toy:induction", "--task", "induction", "--n", "16", "--seed", "1",
                 "--method", "eap", "--top-n", "20", "--no-curve", "--quiet", "--label", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[1].startswith("labeled ")
    data = json.loads(out.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    tags = {r["component"]: r["role_tags"] for r in data["labels"]}
    assert tags.get("a0.h3") == ["previous_token"]  # the toy model's known previous-token head
    in_circuit = {e["name"] for e in data["edges"] if e["in_circuit"]}
    assert len(in_circuit) == data["metrics"]["n_edges"] > 0
    heads = {n["id"] for n in data["nodes"] if n["in_circuit"] and n["id"].startswith(("a", "m"))}
    assert set(tags) == heads  # every component of the circuit is labeled, nothing else
