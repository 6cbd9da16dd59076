"""One job configuration (discovery/pipeline/options.py): the same bounds and defaults in discover(), the CLI,
the API's job request and watches; the job travels as the model."""

import json

import pytest
from pydantic import ValidationError

import tiny
from conftest import token_rows
from discovery.cli import build_parser, discovery_options, flag, main
from discovery.pipeline.discover import discover
from discovery.core.errors import UserError
from discovery import wrap_model
from discovery.pipeline.options import FLAT, DiscoveryOptions, LABEL_BACKENDS, LABEL_SCORERS
from discovery.model.tasks import task_from_rows
from service.jobs.spec import JobRequest, TaskSpec
from service.watches.schemas import WatchRequest

pytestmark = pytest.mark.usefixtures("one_thread")

# (flat options, the CLI's flags for them, the API's nested body part) that every entry point refuses
BAD = [
    ({"top_n": 0}, ["--top-n", "0"], {"selection": {"top_n": 0}}),
    ({"greedy": -3}, ["--greedy", "-3"], {"selection": {"greedy": -3}}),
    ({"threshold": float("nan")}, ["--threshold", "nan"], {"selection": {"threshold": "nan"}}),
    ({"threshold": float("inf")}, ["--threshold", "inf"], {"selection": {"threshold": "inf"}}),
    ({"method": "acdc", "tau": float("inf")}, ["--method", "acdc", "--tau", "inf"],
     {"method": {"name": "acdc", "tau": "inf"}}),
    ({"method": "acdc", "tau": 0.0}, ["--method", "acdc", "--tau", "0"], {"method": {"name": "acdc", "tau": 0}}),
    ({"steps": 0}, ["--steps", "0"], {"method": {"steps": 0}}),
    ({"batch_size": 0}, ["--batch-size", "0"], {"method": {"batch_size": 0}}),
    ({"method": "eap-ig+acdc", "candidates": 0}, ["--method", "eap-ig+acdc", "--candidates", "0"],
     {"method": {"name": "eap-ig+acdc", "candidates": 0}}),
    ({"method": "eap", "tau": 0.1}, ["--method", "eap", "--tau", "0.1"], {"method": {"name": "eap", "tau": 0.1}}),
    ({"method": "acdc", "top_n": 5}, ["--method", "acdc", "--top-n", "5"],
     {"method": {"name": "acdc"}, "selection": {"top_n": 5}}),
]


def _body(**parts):
    return {"model": {"name": "tiny-gpt2"}, "task": {"rows": token_rows(n=2)}, **parts}


@pytest.fixture(scope="module")
def lm():
    return wrap_model(tiny.build("gpt2", n_layers=1))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny.build("gpt2", n_layers=1).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def rows_task():
    return task_from_rows(token_rows(n=4), vocab_size=tiny.VOCAB)


@pytest.mark.parametrize("flat, flags, api", BAD, ids=[" ".join(b[1]) for b in BAD])
def test_every_entry_point_refuses_the_same_values(lm, rows_task, model_dir, tmp_path, capsys, flat, flags, api):
    with pytest.raises(UserError):
        DiscoveryOptions.from_flat(**flat)
    with pytest.raises(UserError):  # discover() refuses before any work
        discover(lm, rows_task, **flat)
    # the CLI: exit 2, one line naming the flag (checked after the paths, before the model loads)
    code = main(["discover", "--model", model_dir, "--task", "ioi", "--out", str(tmp_path / "o.json"),
                 "--quiet", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    named = [f for f in flags if f.startswith("--") and f != "--method"]
    assert any(f in err for f in named) or "decides the circuit" in err or "apply to" in err, err
    assert not (tmp_path / "o.json").exists()
    with pytest.raises(ValidationError):  # the API's job body and a watch's body: one model
        JobRequest.model_validate(_body(**api))
    with pytest.raises(ValidationError):
        WatchRequest.model_validate({"source": "toy:induction", "tasks": [{"builtin": "ioi"}], "interval_s": 60,
                                     **api})


def test_one_set_of_defaults(tmp_path):
    defaults = DiscoveryOptions()
    args = build_parser().parse_args(["discover", "--model", "m", "--task", "ioi", "--out", str(tmp_path / "o")])
    assert discovery_options(args) == defaults
    assert JobRequest.model_validate(_body()).options == defaults
    watch = WatchRequest.model_validate({"source": "toy:induction", "tasks": [{"builtin": "ioi"}], "interval_s": 60})
    assert DiscoveryOptions(method=watch.method, selection=watch.selection, labeling=watch.labeling) == defaults
    assert defaults.method.curve is True  # the API used to default to no curve, the CLI to a curve
    assert TaskSpec(builtin="ioi").n == 200 and TaskSpec(builtin="ioi").seed == 0  # the CLI's --n, --seed defaults
    with pytest.raises(ValidationError):
        TaskSpec(builtin="ioi", n=10**9)


def test_discover_default_method_is_the_options_default(lm, rows_task):
    c = discover(lm, rows_task, curve=False)
    assert c.method.name == DiscoveryOptions().method.name


def test_options_and_keywords_give_the_same_circuit(lm, rows_task):
    opts = DiscoveryOptions.from_flat(method="eap", top_n=7, curve=False, batch_size=3)
    a = discover(lm, rows_task, options=opts)
    b = discover(lm, rows_task, "eap", top_n=7, curve=False, batch_size=3)
    assert [e.in_circuit for e in a.edges] == [e.in_circuit for e in b.edges] and a.metrics.n_edges == 7
    assert a.method.params == b.method.params


def test_tau_one_or_many():
    assert DiscoveryOptions.from_flat(method="acdc", tau=0.1).method.tau == [0.1]
    assert DiscoveryOptions.from_flat(method="acdc", tau=[0.1, 0.2]).method.tau == [0.1, 0.2]
    assert JobRequest.model_validate(_body(method={"name": "acdc", "tau": 0.1})).method.tau == [0.1]
    with pytest.raises(ValidationError, match="one circuit"):  # a job stores one circuit
        JobRequest.model_validate(_body(method={"name": "acdc", "tau": [0.1, 0.2]}))


def test_labeling_names_match_the_labeling_package():
    label = pytest.importorskip("labeling.label")
    assert LABEL_BACKENDS == label.BACKENDS and set(LABEL_SCORERS) == set(label.SCORERS)
    with pytest.raises(ValidationError):
        JobRequest.model_validate(_body(labeling={"backend": "heuristic", "options": {"no_such_option": 1}}))
    with pytest.raises(ValidationError):
        JobRequest.model_validate(_body(labeling={"backend": "nope"}))


def test_every_flat_option_has_a_cli_flag_or_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["discover"]
    flags = {o for a in sub._actions for o in a.option_strings}
    missing = [k for k in FLAT if flag(k) not in flags and k not in ("label_options",)]
    assert not missing, f"options without a `circuitry discover` flag: {missing}"


def test_the_job_travels_as_the_model(tmp_path):
    from service.jobs.pipeline import discover_circuit

    job = JobRequest.model_validate(_body(method={"name": "eap", "curve": False}, selection={"top_n": 4}))
    model = wrap_model(tiny.build("gpt2", n_layers=1))
    task = task_from_rows(job.task.rows, vocab_size=tiny.VOCAB)
    circuit = json.loads(discover_circuit(job, model, task))
    assert circuit["method"]["name"] == "eap" and circuit["selection"] == {"kind": "top-n", "value": 4, "absolute": True, "pruned": True}
    assert circuit["metrics"]["cpr"] is None  # curve false travelled too


def test_light_defaults_match_the_methods():
    from discovery.methods.acdc import DEFAULT_TAU as ACDC_TAU
    from discovery.pipeline.options import DEFAULT_TAU

    assert DEFAULT_TAU == ACDC_TAU
