"""The command line's argument and file handling, fuzzed: a table of damaged files, wrong inputs and output
targets that are not regular files, plus random mutations of valid command lines. Every case exits 0 or 2;
an exit 2 prints exactly one line (`circuitry: error: ...`) on stderr and never a traceback; nothing a
user owns (a FIFO, a symlink's target, a read-only file) is written, replaced or blocked on.

FIFOs, symlinks and read-only files are made in tmp_path; no test touches /dev/*."""

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import tiny
from discovery.cli import main

NAMES = ["Mary", "John", "Alice", "Bob", "Carol", "Dave"]
WORDS = ["<unk>", "When", "and", "went", "to", "the", "store", ",", "gave", "a", "drink", "."] + NAMES
WORDS += [f"w{i}" for i in range(tiny.VOCAB - len(WORDS))]


def _rows(n=4):
    rows = []
    for i in range(n):
        io, s, other = NAMES[i % 6], NAMES[(i + 1) % 6], NAMES[(i + 2) % 6]
        rows.append({"clean": f"When {io} and {s} went to the store , {s} gave a drink to",
                     "corrupted": f"When {io} and {s} went to the store , {other} gave a drink to",
                     "answer": io, "wrong": s})
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """A work folder: a tiny model with a word-level tokenizer, its damaged copies, a task, a circuit file,
    and output targets that must never be written (FIFO, symlinks, read-only file, directory)."""
    root = tmp_path_factory.mktemp("fuzz")
    good = root / "model"
    tiny.build("gpt2", n_layers=2).save_pretrained(good)
    tok = Tokenizer(tok_models.WordLevel({x: i for i, x in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<unk>", unk_token="<unk>").save_pretrained(good)
    weights = (good / "model.safetensors").read_bytes()
    damaged = {"corrupt": weights[:8] + b"\xff" * 64 + weights[72:], "truncated": weights[: len(weights) // 2],
               "empty": b"", "badheader": (1 << 40).to_bytes(8, "little") + weights[8:]}
    for name, data in damaged.items():
        shutil.copytree(good, root / name)
        (root / name / "model.safetensors").write_bytes(data)
    shutil.copytree(good, root / "mismatch")
    cfg = json.loads((good / "config.json").read_text())
    (root / "mismatch" / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    shutil.copytree(good, root / "missingkey")
    sd = load_file(good / "model.safetensors")
    del sd["transformer.h.0.attn.c_attn.weight"]
    save_file(sd, root / "missingkey" / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(good, root / "noweights")
    (root / "noweights" / "model.safetensors").unlink()
    shutil.copytree(good, root / "unsupported")
    (root / "unsupported" / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    shutil.copytree(good, root / "badconfig")
    (root / "badconfig" / "config.json").write_text("{not json")

    task = _jsonl(root / "task.jsonl", _rows())
    circuit = root / "c.json"
    assert main(["discover", "--model", str(good), "--task", task, "--method", "eap", "--top-n", "8", "--no-curve",
                 "--out", str(circuit), "--quiet"]) == 0
    data = json.loads(circuit.read_text())
    bad = {"unknown_node": lambda d: d["edges"][0].update(source="a99.h99", name="a99.h99->logits"),
           "no_nodes": lambda d: d.update(nodes=[]),
           "wrong_shape": lambda d: d["model"].update(n_layers=5),
           "no_edges": lambda d: d.update(edges=[])}
    for name, change in bad.items():
        d = json.loads(circuit.read_text())
        change(d)
        (root / f"{name}.json").write_text(json.dumps(d))
    (root / "binary.pt").write_bytes(bytes(range(256)) * 4)  # binary, but neither a zip nor a pickle
    (root / "pickle.pt").write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00edgesq\x01\xff\xfe" + bytes(range(256)))
    (root / "list.json").write_text("[1, 2, 3]")
    _jsonl(root / "unk.jsonl", [{**_rows(1)[0], "answer": "Zebulon"}])
    _jsonl(root / "big.jsonl", _rows(2) * 60)  # 120 rows

    assert data["edges"]
    return root


def _fresh_targets(root):
    """The output targets that must survive every case, made again (a failing case may have replaced one)."""
    for name in ("fifo", "link-to-fifo", "dangling", "readonly.json", "adir", "missing"):
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.chmod(p, 0o644) if not p.is_symlink() else None
            p.unlink()
    os.mkfifo(root / "fifo")
    os.symlink(root / "fifo", root / "link-to-fifo")
    os.symlink(root / "nowhere", root / "dangling")
    (root / "readonly.json").write_text("keep me")
    os.chmod(root / "readonly.json", 0o444)
    (root / "adir").mkdir()


# (id, argv with {w} for the work folder, expected exit, text the one error line must contain)
OUT_TARGETS = [("fifo", "a FIFO"), ("link-to-fifo", "through a symlink"), ("readonly.json", "read-only"),
               ("adir", "directory"), ("dangling", "broken symlink"), ("missing/dir/x.out", "does not exist")]
WRITERS = {  # every command that writes a file, as argv before the output flag
    "discover": "discover --model {w}/model --task {w}/task.jsonl --method eap --top-n 5 --no-curve --out",
    "export": "export {w}/c.json --format node-link --out",
    "export-mib-pt": "export {w}/c.json --format mib-pt --out",
    "label": "label {w}/c.json --out",
    "label-neuronpedia": "label {w}/c.json --out {w}/labeled-never.json --neuronpedia",
    "view": "view {w}/c.json --out",
    "timeline-chart": "timeline {w}/c.json --chart",
    "demo": "demo --out",
    "mib-submission": "export {w}/c.json --mib-submission",
}
FOLDER_WRITERS = {"demo", "mib-submission"}
OUT_CASES = []
for cmd, base in WRITERS.items():
    for target, match in OUT_TARGETS:
        if cmd in FOLDER_WRITERS and target in ("adir", "missing/dir/x.out"):
            continue  # a directory is what these write into (and they create it)
        if cmd in FOLDER_WRITERS and target in ("fifo", "link-to-fifo", "readonly.json"):
            match = "not a directory"
        extra = " --task ioi --model gpt2" if cmd == "mib-submission" else ""
        OUT_CASES.append((f"{cmd}-{target}", f"{base} {{w}}/{target}{extra}", 2, match))

CASES = OUT_CASES + [
    # model loading: damaged weights, sizes that disagree, unknown architecture, missing files
    *[(f"model-{name}", f"discover --model {{w}}/{name} --task {{w}}/task.jsonl --out {{w}}/o.json", 2, match)
      for name, match in [("corrupt", "model.safetensors"), ("truncated", "model.safetensors"),
                          ("empty", "model.safetensors"), ("badheader", "model.safetensors"),
                          ("mismatch", "config.json"), ("missingkey", "transformer.h.0.attn.c_attn.weight"),
                          ("noweights", "no weights"), ("unsupported", "not supported"),
                          ("badconfig", "config.json")]],
    ("evaluate-damaged-model", "evaluate --model {w}/truncated --task {w}/task.jsonl --circuit {w}/c.json", 2,
     "model.safetensors"),
    ("label-damaged-model", "label {w}/c.json --model {w}/empty --out {w}/l.json", 2, "model.safetensors"),
    # circuit files checked against the model's graph before use
    ("evaluate-unknown-node", "evaluate --model {w}/model --task {w}/task.jsonl --circuit {w}/unknown_node.json",
     2, "a99.h99"),
    ("evaluate-no-nodes", "evaluate --model {w}/model --task {w}/task.jsonl --circuit {w}/no_nodes.json", 2, "nodes"),
    ("evaluate-wrong-shape", "evaluate --model {w}/model --task {w}/task.jsonl --circuit {w}/wrong_shape.json",
     2, "shape"),
    ("evaluate-no-edges", "evaluate --model {w}/model --task {w}/task.jsonl --circuit {w}/no_edges.json", 2, "edges"),
    ("evaluate-binary", "evaluate --model {w}/model --task {w}/task.jsonl --circuit {w}/binary.pt", 2, "binary.pt"),
    ("export-binary", "export {w}/binary.pt --format json --out {w}/x.json", 2, "binary.pt"),
    ("export-pickle", "export {w}/pickle.pt --format json --out {w}/x.json", 2, "pickle.pt"),
    ("export-list", "export {w}/list.json --format json --out {w}/x.json", 2, "list.json"),
    ("export-unknown-node", "export {w}/unknown_node.json --format node-link --out {w}/x.json", 2, "a99.h99"),
    ("export-no-nodes", "export {w}/no_nodes.json --format mib --out {w}/x.json", 2, "nodes"),
    ("view-unknown-node", "view {w}/unknown_node.json --out {w}/x.html", 2, "a99.h99"),
    ("view-binary", "view {w}/binary.pt --out {w}/x.html", 2, "binary.pt"),
    ("diff-binary", "diff {w}/c.json {w}/binary.pt", 2, "binary.pt"),
    ("timeline-binary", "timeline {w}/binary.pt", 2, "binary.pt"),
    ("label-unknown-node", "label {w}/unknown_node.json --out {w}/l.json", 2, "a99.h99"),
    # silent acceptances
    ("unknown-answer-word", "discover --model {w}/model --task {w}/unk.jsonl --out {w}/o.json", 2, "Zebulon"),
    ("export-d-model-negative", "export {w}/c.json --format mib --d-model -1 --out {w}/x.json", 2, "--d-model"),
    ("export-d-model-zero", "export {w}/c.json --format mib --d-model 0 --out {w}/x.json", 2, "--d-model"),
    ("serve-lease-nan", "serve --lease-s nan --no-dispatcher --database-url sqlite:///{w}/s.db", 2, "--lease-s"),
    ("serve-lease-inf", "serve --lease-s inf --no-dispatcher --database-url sqlite:///{w}/s.db", 2, "--lease-s"),
    ("serve-heartbeat-negative", "serve --heartbeat-s -1 --database-url sqlite:///{w}/s.db", 2, "--heartbeat-s"),
    ("serve-backoff-nan", "serve --backoff-s nan --database-url sqlite:///{w}/s.db", 2, "--backoff-s"),
    ("serve-model-root-missing", "serve --model-root {w}/nonexistent --database-url sqlite:///{w}/s.db", 2,
     "--model-root"),
    ("serve-model-root-file", "serve --model-root {w}/task.jsonl --database-url sqlite:///{w}/s.db", 2,
     "--model-root"),
    ("serve-actor-cpus-nan", "serve --actor-cpus nan --database-url sqlite:///{w}/s.db", 2, "--actor-cpus"),
    # unbounded work: the CLI is capped like the API; --n limits a file
    ("rows-over-cap", "discover --model {w}/model --task {w}/big.jsonl --out {w}/o.json", 2, "CIRCUITRY_MAX_ROWS"),
    ("n-over-cap", "discover --model {w}/model --task ioi --n 100000 --out {w}/o.json", 2, "--n"),
    ("n-limits-file", "discover --model {w}/model --task {w}/big.jsonl --n 4 --method eap --top-n 5 --no-curve "
     "--out {w}/n4.json", 0, ""),
    ("n-zero-file", "discover --model {w}/model --task {w}/task.jsonl --n 0 --out {w}/o.json", 2, "--n"),
    # more argument handling
    ("discover-stdout", "discover --model {w}/model --task {w}/task.jsonl --out -", 2, "standard output"),
    ("export-stdout", "export {w}/c.json --format node-link --out -", 0, ""),
    ("view-stdout", "view {w}/c.json --out -", 0, ""),
    ("diff-top-negative", "diff {w}/c.json {w}/c.json --top -1", 2, "--top"),
    ("tasks-show-n-negative", "tasks show ioi --n -3", 2, "--n"),
    ("tasks-show-n-huge", "tasks show ioi --n 100000000", 2, "--n"),
    ("discover-batch-nan", "discover --model {w}/model --task {w}/task.jsonl --out {w}/o.json --target nan", 2,
     "--target"),
    ("discover-tau-nan", "discover --model {w}/model --task {w}/task.jsonl --out {w}/o.json --method acdc --tau nan",
     2, "--tau"),
    ("discover-task-dir", "discover --model {w}/model --task {w}/adir --out {w}/o.json", 2, "adir"),
    ("discover-task-fifo", "discover --model {w}/model --task {w}/fifo --out {w}/o.json", 2, "fifo"),
    ("evaluate-circuit-fifo", "evaluate --model {w}/model --task {w}/task.jsonl --circuit {w}/fifo", 2, "fifo"),
    ("export-circuit-dir", "export {w}/adir --format json --out {w}/x.json", 2, "adir"),
    ("view-circuit-fifo", "view {w}/fifo --out {w}/x.html", 2, "fifo"),
    ("no-command", "", 2, "command"),
    ("unknown-command", "frobnicate", 2, "frobnicate"),
]


class FifoDrain:
    """Holds the FIFO open for reading (so that opening it for writing does not block) and collects
    whatever is written into it."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data, self.done = [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                self.data.append(chunk)
            else:
                time.sleep(0.01)

    def stop(self) -> bytes:
        self.done.set()
        self.thread.join()
        os.close(self.fd)
        return b"".join(self.data)


def _argv(template, w):
    return [a.replace("{w}", str(w)) for a in template.split()]


def _check(code, err, expected, match, case):
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("circuitry: warning:")]
    assert "Traceback" not in err, f"{case}: {err}"
    assert code == expected, f"{case}: exit {code}, stderr {err!r}"
    if expected == 2:
        assert len(lines) == 1 and lines[0].startswith("circuitry: error: "), f"{case}: {err!r}"
        assert match in lines[0], f"{case}: {lines[0]!r} lacks {match!r}"


@pytest.mark.parametrize("case,template,expected,match", CASES, ids=[c[0] for c in CASES])
def test_case(case, template, expected, match, w, capsys, monkeypatch):
    monkeypatch.chdir(w)
    monkeypatch.setenv("CIRCUITRY_MAX_ROWS", "100")
    monkeypatch.delenv("CIRCUITRY_LLM_BASE_URL", raising=False)
    _fresh_targets(w)

    def no_server(*a, **k):  # a serve case that is not refused must not block the test
        raise AssertionError(f"{case}: the server would have started")
    monkeypatch.setattr("service.server.serve", no_server)
    drain = FifoDrain(w / "fifo")  # a write into the FIFO would block forever: read what comes, to see it
    before = {p: (os.lstat(p).st_mode, p.read_text() if p.is_file() and not p.is_symlink() else None)
              for p in (w / "fifo", w / "link-to-fifo", w / "readonly.json", w / "adir")}
    code = main(_argv(template, w) + (["--quiet"] if template.split()[:1] in (["discover"], ["evaluate"], ["label"])
                                      else []))
    out, err = capsys.readouterr()
    assert drain.stop() == b"", f"{case}: wrote into the FIFO"
    _check(code, err, expected, match, case)
    for p, (mode, text) in before.items():  # nothing the user owns was replaced or written
        assert os.lstat(p).st_mode == mode and (text is None or p.read_text() == text), case
    assert stat.S_ISFIFO(os.stat(w / "fifo").st_mode) and not os.path.exists(w / "missing")
    if case in ("export-stdout", "view-stdout"):
        assert out.lstrip().lower().startswith(("{", "<!doctype", "<html")), out[:80]
    if case == "n-limits-file":
        assert json.loads((w / "n4.json").read_text())["task"]["rows"] == 4


# Random mutations of valid command lines: flags given odd values, files swapped for odd files. The
# commands are the quick ones (model-free, or stopped by a check before the model loads).
ODD_VALUES = ["-1", "0", "nan", "inf", "-inf", "1e309", "", " ", "x", "\x00", "9" * 40, "-", "--", "1,2,,",
              "{w}/fifo", "{w}/adir", "{w}/binary.pt", "{w}/list.json", "{w}/readonly.json", "{w}/dangling",
              "{w}/nonexistent", "{w}/link-to-fifo", "é" * 300]
BASES = [
    "export {w}/c.json --format node-link --out {w}/fz.json",
    "export {w}/c.json --format mib --d-model 32 --out {w}/fz.json",
    "diff {w}/c.json {w}/c.json --top 5",
    "timeline {w}/c.json --json",
    "view {w}/c.json --out {w}/fz.html",
    "tasks show ioi --n 2 --seed 1",
    "discover --model {w}/nonexistent --task {w}/task.jsonl --out {w}/fz.json --top-n 5",
    "evaluate --model {w}/nonexistent --task {w}/task.jsonl --circuit {w}/c.json",
]


def _mutations(seed=0, n=120):
    rng = random.Random(seed)
    for i in range(n):
        argv = BASES[i % len(BASES)].split()
        for _ in range(rng.randint(1, 2)):
            j = rng.randrange(1, len(argv))
            argv[j] = rng.choice(ODD_VALUES)
        yield argv


def test_random_mutations(w, capsys, monkeypatch):
    monkeypatch.chdir(w)  # a mutated relative --out ('x', '-1') lands in the work folder, not the checkout
    _fresh_targets(w)
    drain = FifoDrain(w / "fifo")
    for argv in _mutations():
        argv = [a.replace("{w}", str(w)) for a in argv]
        try:
            code = main(argv)
        except SystemExit as exc:  # --help and friends
            code = exc.code
        out, err = capsys.readouterr()
        assert code in (0, 2), (argv, code, err)
        lines = [x for x in err.splitlines() if x.strip() and not x.startswith("circuitry: warning:")]
        assert "Traceback" not in err, (argv, err)
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith("circuitry: error: "), (argv, err)
        assert stat.S_ISFIFO(os.stat(w / "fifo").st_mode) and (w / "readonly.json").read_text() == "keep me"
    assert drain.stop() == b""


def test_tokens_create_piped_to_head_keeps_both_secrets(tmp_path):
    """`circuitry tokens create | head -1`: no BrokenPipeError traceback, and the first line carries the
    token and its callback signing secret (neither is stored in clear, so neither may be lost)."""
    db = f"sqlite:///{tmp_path}/t.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(f"{sys.executable} -m discovery.cli tokens --database-url {db} create --name a | head -1",
                          shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("token 1 (a): cty_") and "callback signing secret: " in proc.stdout, proc.stdout


def test_tokens_create_into_a_closed_pipe_revokes_the_unseen_token(tmp_path):
    """stdout closed before anything is read: one line on stderr, exit 2, and the token whose secret nobody
    saw is revoked (not left active and unknown)."""
    db = f"sqlite:///{tmp_path}/t.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r, wfd = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "discovery.cli", "tokens", "--database-url", db, "create",
                               "--name", "a"], stdout=wfd, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(wfd)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "revoked" in lines[0], proc.stderr
    listing = subprocess.run([sys.executable, "-m", "discovery.cli", "tokens", "--database-url", db, "list"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert "\trevoked" in listing.stdout, listing.stdout
