"""The LLM path against a real chat-completions server on loopback (tests/labeling_server.py): the real
`openai` client, retries, the cache, failures ending in the right status with the heuristic label kept."""

import json
import re

import pytest
from labeling_helpers import induction_setup
from labeling_server import FakeLLM, canned

from discovery.core.circuit import Circuit
from discovery.cli import main
from discovery.core.errors import UserError
from labeling import EvidenceConfig, LLMClient, LLMConfig, collect_evidence, label_circuit
from labeling.heuristic import heuristic_labels
from labeling.llm_labeler import llm_label
from labeling.prompts import TEMPLATE_VERSION
from labeling.verify import roles_named, verify

SMALL = EvidenceConfig(seed=0, n_repeated=16, max_task_rows=16, ov_tokens=128, n_heldout=6)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def induction():
    return induction_setup(n=16, seed=3)


@pytest.fixture(scope="module")
def heuristic(induction):
    model, task, circuit = induction
    bundle = collect_evidence(model, task, circuit, ["a0.h3", "a1.h0"], SMALL)
    return heuristic_labels(bundle.evidence)


@pytest.fixture
def server():
    with FakeLLM() as s:
        yield s


def config(server, tmp_path, **kw):
    base = dict(base_url=server.base_url, model="test-model", api_key="sk-test", timeout_s=0.5, max_retries=3,
                backoff_s=0.01, max_backoff_s=0.05, concurrency=2, cache_dir=tmp_path / "cache")
    return LLMConfig(**{**base, **kw})


def test_label_circuit_with_the_llm_and_the_cache(induction, server, tmp_path, monkeypatch):
    model, task, circuit = induction
    monkeypatch.setenv("CIRCUITRY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CIRCUITRY_LLM_BASE_URL", server.base_url)
    monkeypatch.setenv("CIRCUITRY_LLM_MODEL", "test-model")
    monkeypatch.setenv("CIRCUITRY_LLM_API_KEY", "sk-secret-key")
    before = circuit.model_dump()
    out = label_circuit(circuit, model, task, "openai", components=["a0.h3", "a1.h0"], evidence=SMALL)
    assert circuit.model_dump() == before
    by = {r.component: r for r in out.labels}
    # the canned label says nothing the scorers can use: its held-out scores sit at chance, so it is not ok
    assert by["a0.h3"].label == "LLM label for a0.h3" and by["a0.h3"].status == "unverified"
    assert "vs random label" in by["a0.h3"].status_reason
    assert server.requests[0]["max_tokens"] == 1 and "response_format" not in server.requests[0]  # the check
    assert by["a0.h3"].provenance.heuristic_label == "Previous-token head"
    assert by["a0.h3"].provenance.template_version == TEMPLATE_VERSION
    # every request was the real client's: temperature 0, the seed, the JSON schema, the model
    asked = server.requests[1:]
    assert all(r["temperature"] == 0 and r["seed"] == 0 and r["model"] == "test-model" for r in asked)
    assert {r["response_format"]["json_schema"]["name"] for r in asked} == \
        {"component_label", "pair_scores", "context_scores"}
    # the endpoint check, 2 labels + 2 x 2 scorers (pairs, detection) x (explanation + random-label baseline)
    assert len(server.requests) == 11 and out.labeling.usage.calls == 10
    assert out.labeling.usage.prompt_tokens == 1000 and out.labeling.scorer == "llm"
    det = by["a0.h3"].scores["llm_detection"]
    assert det.metric == "roc_auc" and det.value == 0.5 and det.n_positive > 0  # the canned scorer answers 0.5
    s = by["a0.h3"].scores["llm"]
    assert s.metric == "roc_auc" and s.value is not None and s.random_baseline is not None
    assert "evidence_agreement" in by["a0.h3"].scores
    assert list((tmp_path / "home" / "cache" / "llm").rglob("*.json"))  # $CIRCUITRY_HOME/cache/llm
    assert "sk-secret-key" not in out.model_dump_json()  # the key is never written out
    # nothing of the circuit is lost
    assert out.model_dump(include=set(Circuit.model_fields) - {"schema_version"}) == \
        circuit.model_dump(exclude={"schema_version"})

    again = label_circuit(circuit, model, task, "openai", components=["a0.h3", "a1.h0"], evidence=SMALL)
    assert len(server.requests) == 11  # the cache answered everything (the endpoint was checked once)
    assert again.labeling.usage.calls == 0 and again.labeling.usage.cached == 10
    assert [r.label for r in again.labels] == [r.label for r in out.labels]


def test_llm_scorer_separates_a_right_from_a_wrong_explanation(induction, server, tmp_path):
    """The server's scorer takes "previous" literally: the previous-token head's heuristic label
    ("Previous-token head") gets AUC 1 on its held-out pairs; an induction head with that label does not."""
    model, task, circuit = induction
    out = label_circuit(circuit, model, task, "heuristic", components=["a0.h3", "a1.h0"], evidence=SMALL,
                        scorer="llm", llm=config(server, tmp_path))
    by = {r.component: r for r in out.labels}
    assert by["a0.h3"].scores["llm"].value == 1.0
    assert by["a0.h3"].scores["llm"].random_baseline < 1.0  # the baseline got the induction head's label
    assert by["a1.h0"].scores["llm"].random_baseline == 1.0 or by["a1.h0"].scores["llm"].value == 0.5
    assert out.labels[0].provenance.backend == "heuristic" and out.labeling.scorer == "llm"


@pytest.mark.parametrize("script, retries", [(["429", "500"], 2), (["timeout"], 1), (["500", "429", "500"], 3)])
def test_retries_then_success(heuristic, server, tmp_path, script, retries):
    server.script = list(script)
    rec = llm_label(LLMClient(config(server, tmp_path)), heuristic["a0.h3"], "toy", "induction")
    assert rec.status == "ok" and rec.label == "LLM label for a0.h3"
    assert rec.provenance.usage.retries == retries and rec.provenance.usage.calls == retries + 1
    assert server.behaviours == script + ["ok"]


def test_retries_exhausted_keep_the_heuristic_label(heuristic, server, tmp_path):
    server.script = ["500"] * 10
    rec = llm_label(LLMClient(config(server, tmp_path, max_retries=2)), heuristic["a0.h3"], "toy", "induction")
    assert rec.status == "llm_failed" and rec.label == "Previous-token head" and rec.role_tags == ["previous_token"]
    assert len(server.requests) == 3 and "gave up after 3 attempts" in rec.provenance.error
    assert "HTTP 500 (Internal Server Error: injected 500)" in rec.provenance.error
    assert rec.evidence == heuristic["a0.h3"].evidence


def test_no_retry_on_4xx(heuristic, server, tmp_path):
    server.script = ["400"]
    rec = llm_label(LLMClient(config(server, tmp_path)), heuristic["a1.h0"], "toy", "induction")
    assert rec.status == "llm_failed" and rec.label == "Induction head"
    assert len(server.requests) == 1 and "HTTP 400" in rec.provenance.error


def test_refusal_keeps_the_heuristic_label(heuristic, server, tmp_path):
    server.script = ["refusal"]
    rec = llm_label(LLMClient(config(server, tmp_path)), heuristic["a1.h0"], "toy", "induction")
    assert rec.status == "llm_failed" and "refused" in rec.provenance.error and rec.label == "Induction head"


def test_malformed_json_gets_one_repair(heuristic, server, tmp_path):
    server.script = ["malformed"]
    rec = llm_label(LLMClient(config(server, tmp_path)), heuristic["a0.h3"], "toy", "induction")
    assert rec.status == "ok" and len(server.requests) == 2
    repair = server.requests[1]["messages"]
    assert repair[-2]["role"] == "assistant" and repair[-2]["content"].startswith("this is not JSON")
    assert "not JSON" in repair[-1]["content"]


def test_malformed_twice_is_unparsed(heuristic, server, tmp_path):
    server.script = ["malformed", "malformed"]
    rec = llm_label(LLMClient(config(server, tmp_path)), heuristic["a0.h3"], "toy", "induction")
    assert rec.status == "unparsed" and rec.label == "Previous-token head" and len(server.requests) == 2
    assert rec.provenance.error.startswith("not JSON")
    reason = verify(rec).status_reason
    assert reason.startswith("The LLM's answer could not be read") and "not JSON" in reason


def test_schema_invalid_answer_is_unparsed(heuristic, tmp_path):
    too_long = json.dumps({"label": "a label that is far too long to be accepted here", "description": "x.",
                           "role_tags": ["other"], "confidence": 0.5})
    with FakeLLM(responder=lambda body: too_long) as server:
        rec = llm_label(LLMClient(config(server, tmp_path)), heuristic["a0.h3"], "toy", "induction")
    assert rec.status == "unparsed" and "label" in rec.provenance.error and len(server.requests) == 2


def test_cached_failures_are_not_cached_but_answers_are(heuristic, server, tmp_path):
    server.script = ["400"]
    client = LLMClient(config(server, tmp_path))
    assert llm_label(client, heuristic["a0.h3"], "toy", "induction").status == "llm_failed"
    assert llm_label(client, heuristic["a0.h3"], "toy", "induction").status == "ok"  # asked again
    assert llm_label(client, heuristic["a0.h3"], "toy", "induction").provenance.usage.cached == 1
    assert len(server.requests) == 2


def test_failed_labels_keep_the_whole_circuit(induction, server, tmp_path):
    model, task, circuit = induction
    server.script = ["ok"] + ["400"] * 100  # the endpoint check passes, then every request fails
    out = label_circuit(circuit, model, task, "openai", components=["a0.h3", "a1.h0"], evidence=SMALL,
                        llm=config(server, tmp_path, concurrency=1, max_failures=100))
    assert [r.status for r in out.labels] == ["llm_failed", "llm_failed"]
    assert [r.label for r in out.labels] == ["Previous-token head", "Induction head"]
    assert all(r.scores["llm"].value is None and r.scores["evidence_agreement"].value is not None for r in out.labels)
    assert out.edges == circuit.edges and out.nodes == circuit.nodes and out.metrics == circuit.metrics
    for r in out.labels:
        assert_sentences(r.status_reason)
        assert r.status_reason.startswith("The LLM gave no label (the endpoint answered HTTP 400 (Bad Request")


def test_cli_openai_backend(induction, server, tmp_path, monkeypatch, capsys):
    model, task, circuit = induction
    circuit.save(tmp_path / "c.json")
    monkeypatch.setenv("CIRCUITRY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CIRCUITRY_LLM_BASE_URL", server.base_url)
    monkeypatch.setenv("CIRCUITRY_LLM_MODEL", "test-model")
    args = ["label", str(tmp_path / "c.json"), "--out", str(tmp_path / "l.json"), "--backend", "openai",
            "--components", "a0.h3", "--device", "cpu"]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert "with openai (1 unverified)" in line and "LLM 5 calls, 0 cached" in line
    assert main(args) == 0
    assert "LLM 0 calls, 5 cached" in capsys.readouterr().out


# --- the endpoint check, stopping after failed calls, label text vs role tags, readable reasons ------------

def assert_sentences(reason: str) -> None:
    """status_reason reads as sentences: each capitalised and ended, no exception names or leaked repr."""
    assert reason and reason[0].isupper() and reason.endswith("."), reason
    assert not re.search(r"\b[A-Z][A-Za-z]*Error\b|\(\s*'[^' ]*'\s*\)|\bNone\b|\bnan\b|Traceback", reason), reason
    for s in re.split(r"(?<=\.)\s+(?=\S)", reason):
        assert s[0].isupper(), (s, reason)


def test_endpoint_without_v1_fails_the_check_in_one_line(induction, server, tmp_path, monkeypatch, capsys):
    """A base URL without /v1 answers 404: one line naming the 404 and /v1, exit 2, before any labeling
    (it passed the GET /models check; then every call failed, labels came back llm_failed, exit 0)."""
    model, task, circuit = induction
    circuit.save(tmp_path / "c.json")
    monkeypatch.setenv("CIRCUITRY_HOME", str(tmp_path / "home"))
    base = server.base_url.removesuffix("/v1")
    args = ["label", str(tmp_path / "c.json"), "--out", str(tmp_path / "l.json"), "--backend", "openai",
            "--base-url", base, "--llm-model", "test-model", "--components", "a0.h3", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 404" in err and "/v1" in err and "Traceback" not in err, err
    assert not (tmp_path / "l.json").exists() and server.requests == []  # nothing reached /v1/chat/completions


def test_endpoint_check_is_a_real_completion(server, tmp_path):
    """The check answers only when a chat completion comes back: a server error status is one line too."""
    server.script = ["400"]
    with pytest.raises(UserError, match=r"answered a one-token chat completion .* HTTP 400 \(Bad Request"):
        LLMClient(config(server, tmp_path, model="no-such-model")).check()
    LLMClient(config(server, tmp_path, model="test-model")).check()  # ok now
    assert [r["max_tokens"] for r in server.requests] == [1, 1]


def test_failed_calls_stop_the_run(induction, server, tmp_path):
    model, task, circuit = induction
    server.script = ["ok"] + ["400"] * 100  # the check passes, then the endpoint rejects everything
    cfg = config(server, tmp_path, concurrency=1, max_retries=0)
    with pytest.raises(UserError, match="stopped after 4 failed LLM calls .*HTTP 400") as exc:
        label_circuit(circuit, model, task, "openai", components=["a0.h3", "a1.h0", "m1"], evidence=SMALL, llm=cfg)
    assert "\n" not in str(exc.value)
    assert len(server.requests) == 1 + 4  # the check, 3 tolerated failures and the one that stopped the run


def test_cli_stops_after_failed_calls_with_exit_2(induction, server, tmp_path, monkeypatch, capsys):
    model, task, circuit = induction
    circuit.save(tmp_path / "c.json")
    monkeypatch.setenv("CIRCUITRY_HOME", str(tmp_path / "home"))
    server.script = ["ok"] + ["400"] * 100
    args = ["label", str(tmp_path / "c.json"), "--out", str(tmp_path / "l.json"), "--backend", "openai",
            "--base-url", server.base_url, "--llm-model", "test-model", "--concurrency", "1", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped after 4 failed LLM calls" in err and "Traceback" not in err, err
    assert not (tmp_path / "l.json").exists()


def _name_mover_everywhere(body):
    """An LLM that calls every component a name mover, and one that names a role it does not tag."""
    name = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
    if name == "component_label":
        comp = re.search(r"component: (\S+)", body["messages"][1]["content"]).group(1)
        if comp == "a1.h0":  # names a role, tags none
            return json.dumps({"label": "Induction head", "description": "It copies.", "role_tags": ["other"],
                               "confidence": 0.9})
        return json.dumps({"label": "Name mover head", "description": "It moves names to the output.",
                           "role_tags": ["name_mover"], "confidence": 0.9})
    return canned(body)


def test_label_text_and_role_tags_never_disagree(induction, tmp_path):
    """The MLP and the previous-token head called "Name mover head" lose the tag (its test fails) and the
    text with it; a label naming a role it does not tag is replaced too. The reason says so."""
    model, task, circuit = induction
    with FakeLLM(responder=_name_mover_everywhere) as server:
        out = label_circuit(circuit, model, task, "openai", components=["a0.h3", "a1.h0", "m1"], evidence=SMALL,
                            scorer="evidence_agreement", llm=config(server, tmp_path))
    by = {r.component: r for r in out.labels}
    for r in out.labels:
        assert set(roles_named(r.label)) <= set(r.role_tags), (r.component, r.label, r.role_tags)
        assert "Name mover" not in r.label and r.status == "unverified"
        assert "named the role" in r.status_reason and "was replaced by" in r.status_reason
        assert_sentences(r.status_reason)
    assert by["m1"].role_tags == ["other"] and by["m1"].label == by["m1"].provenance.heuristic_label
    assert by["a0.h3"].role_tags == ["other"] and by["a0.h3"].label == "Unclassified head: no tested pattern"
    assert "Role 'name_mover' removed" in by["a0.h3"].status_reason
    assert by["a1.h0"].label == "Unclassified head: no tested pattern"  # "Induction head" was never tagged
    assert "'induction', which is not among its tags" in by["a1.h0"].status_reason


def _no_scores(body):
    name = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
    return "{}" if name in ("pair_scores", "context_scores") else canned(body)


def test_every_status_reason_is_a_sentence(induction, tmp_path):
    """An LLM scorer whose answers lack 'scores' (it read "no held-out score ('scores')", a leaked KeyError)."""
    model, task, circuit = induction
    with FakeLLM(responder=_no_scores) as server:
        out = label_circuit(circuit, model, task, "heuristic", components=["a0.h3", "a1.h0", "m1"], evidence=SMALL,
                            scorer="llm", llm=config(server, tmp_path))
    for r in out.labels:
        assert_sentences(r.status_reason)
    for r in out.labels[:2]:  # the heads (the toy's MLP is silent: nothing held out to ask about)
        assert "No held-out llm:test-model score: the LLM's answer could not be read, even after one repair " \
               "request (the answer has no 'scores' list)." in r.status_reason, r.status_reason
