"""IOI roles (labeling/ioi.py) on a hand-built model whose heads have known roles (tests/ioi_constructed.py):
every role is found on the head where it was planted and on no other head, with the heads moved to
other indices too; the measurements behind the tests are checked against the HF model's own attention
and against knockouts done with HF hooks; the label text never names a role outside its tags."""

import pytest
import torch
from ioi_constructed import END, H, ROLES, build, expected, rows
from labeling_helpers import hand_circuit

from discovery.model.adapters import wrap_model
from discovery.model.tasks import iter_batches, task_from_rows
from discovery.toy.ground_truth import attention_patterns
from labeling import EvidenceConfig, label_circuit
from labeling.heuristic import THRESHOLDS
from labeling.ioi import ioi_role_test, reads
from labeling.schema import DataRef, IOIEvidence
from labeling.stats import beats_baseline
from labeling.verify import role_test, roles_named

CFG = EvidenceConfig(seed=0, n_repeated=32, max_task_rows=32, ov_tokens=256)
CHECKED = set(ROLES) | {"positional"}
HEADS = [f"a{layer}.h{h}" for layer in range(4) for h in range(H)]


def _label(shift: int):
    model = wrap_model(build(shift), name=f"ioi-constructed-shift{shift}")
    task = task_from_rows(rows(32), vocab_size=12, name="ioi-constructed")
    circuit = hand_circuit(model, task, [f"{n}->logits" for n in HEADS])
    out = label_circuit(circuit, model, task, components=HEADS, evidence=CFG, scorer="evidence_agreement")
    return model, task, {r.component: r for r in out.labels}


@pytest.fixture(scope="module")
def labeled():
    return _label(0)


@pytest.mark.parametrize("shift", [0, 2])
def test_each_role_found_where_planted_and_nowhere_else(shift, labeled):
    model, task, by = labeled if shift == 0 else _label(shift)
    want = expected(shift)
    for node in HEADS:
        rec = by[node]
        assert set(rec.role_tags) & CHECKED == want.get(node, set()), (node, rec.label, rec.status_reason)
        assert set(roles_named(rec.label)) <= set(rec.role_tags), (node, rec.label)  # text and tags agree
        tags_pass = all(role_test(t, rec.evidence)[0] for t in rec.role_tags if t != "other")
        scores_pass = all(beats_baseline(s)[0] for s in rec.scores.values())
        assert (rec.status == "ok") == (tags_pass and scores_pass), (node, rec.status_reason)
    # the planted IOI roles are named in the label, and those whose held-out scores beat the baseline are ok
    names = {"name_mover": "Name mover head", "negative_name_mover": "Negative name mover head",
             "backup_name_mover": "Backup name mover head", "s_inhibition": "S-inhibition head"}
    for node, roles in want.items():
        for role in roles & set(names):
            assert by[node].label == names[role], (node, by[node].label)
        if roles & set(names):  # role tests passed and the held-out scores beat the random label
            assert by[node].status == "ok", (node, by[node].status_reason)
    nm = f"a2.h{(0 + shift) % H}"
    assert by[nm].status == "ok", by[nm].status_reason
    assert by[nm].evidence.ioi.name_movers == [nm]  # the negative name mover is not one


def test_measurements_match_the_models_own_attention(labeled):
    model, task, by = labeled
    ev = task.subset(list(range(0, 32, 2)))  # labeling's evidence rows
    batch = next(iter(iter_batches(ev, 64)))
    att = attention_patterns(model.hf_model, batch.clean)
    att_c = attention_patterns(model.hf_model, batch.corrupted)
    ids = batch.clean
    io = ids == batch.answers[:, :1]
    io[:, -1] = False
    s2 = torch.zeros_like(io)
    s2[:, 4] = True  # [BOS, A, B, f1, S, f2, END]
    assert bool((ids[:, 4] == batch.wrongs[:, 0]).all()) and bool((ids[:, -1] == END).all())
    for node in ("a2.h0", "a2.h1", "a1.h1", "a0.h2"):
        layer, head = int(node[1]), int(node[4])
        end, end_c = att[layer][:, head, -1], att_c[layer][:, head, -1]
        ioi = by[node].evidence.ioi
        assert ioi.to_io == pytest.approx(float((end * io).sum(-1).mean()), abs=1e-4)
        assert ioi.to_s2 == pytest.approx(float((end * s2).sum(-1).mean()), abs=1e-4)
        assert ioi.to_s2_corrupted == pytest.approx(float((end_c * s2).sum(-1).mean()), abs=1e-4)
    # the positional head: 2 back from END is S2 on clean and corrupted prompts alike
    pos = by["a0.h2"].evidence.ioi
    assert pos.offset == 2 and pos.to_s2 > 0.9 and pos.to_s2_corrupted > 0.9
    assert by["a0.h2"].label == "Fixed-offset head: 2 tokens back"


def _logit_diff(hf, batch, hook_layer=None, hook=None):
    handle = hf.transformer.h[hook_layer].attn.c_proj.register_forward_pre_hook(hook) if hook else None
    try:
        lg = hf(batch.clean).logits[:, -1]
    finally:
        if handle:
            handle.remove()
    return (lg.gather(-1, batch.answers[:, :1]) - lg.gather(-1, batch.wrongs[:, :1]))[:, 0]


def test_knockouts_by_hand(labeled):
    """Backup: with the name mover's output mean-ablated (HF hook on its c_proj input), the backup head's
    END -> IO attention (HF attention) is what labeling recorded, and it reads IO. S-inhibition:
    patching its corrupted-run output into the whole model loses the behaviour, which only reaches the
    logits through the name movers' queries here."""
    model, task, by = labeled
    hf, dh = model.hf_model, 192 // H
    batch = next(iter(iter_batches(task.subset(list(range(0, 32, 2))), 64)))
    zs = {}

    def grab(layer):
        def f(_mod, args):
            zs[layer] = args[0].detach().clone()
        return f
    handles = [hf.transformer.h[i].attn.c_proj.register_forward_pre_hook(grab(i)) for i in (1, 2)]
    hf(batch.clean)
    clean_z = dict(zs)
    hf(batch.corrupted)
    corrupted_z = dict(zs)
    for h in handles:
        h.remove()
    mean = clean_z[2][..., 0:dh].mean((0, 1))

    def knock(_mod, args):
        x = args[0].clone()
        x[..., 0:dh] = mean
        return (x,)
    handle = hf.transformer.h[2].attn.c_proj.register_forward_pre_hook(knock)
    try:
        att = attention_patterns(hf, batch.clean)[3][:, 0, -1]
    finally:
        handle.remove()
    io = batch.clean == batch.answers[:, :1]
    io[:, -1] = False
    backup = by["a3.h0"].evidence.ioi
    assert backup.knockout_to_io == pytest.approx(float((att * io).sum(-1).mean()), abs=1e-3)
    assert backup.knockout_to_io > 0.4 > backup.to_io
    assert backup.knockout_direct - backup.direct >= THRESHOLDS["backup_gain"] * backup.name_movers_direct > 0

    def patch(_mod, args):
        x = args[0].clone()
        x[..., dh:2 * dh] = corrupted_z[1][..., dh:2 * dh]
        return (x,)
    base = _logit_diff(hf, batch).mean()
    lost = float((base - _logit_diff(hf, batch, 1, patch).mean()) / base)
    effect = by["a1.h1"].evidence.ioi.s_inhibition_effect
    assert lost >= THRESHOLDS["s_inhibition_effect"] and effect >= THRESHOLDS["s_inhibition_effect"]


def _ev(**kw):
    base = dict(data=DataRef(rows=1, source="t"), rows=10, to_io=0.0, to_s=0.0, to_s2=0.0, name_copy=0.0,
                name_suppression=0.0, direct=0.0, max_direct=1.0)
    return IOIEvidence(**{**base, **kw})


def test_role_tests_on_hand_made_numbers():
    th = THRESHOLDS
    # content: attention on IO above the best fixed distance (or above the corrupted prompt) by the margin
    assert reads(0.9, 0.2, None, th)[0] and reads(0.9, 0.9, 0.3, th)[0]
    assert not reads(0.9, 0.9, 0.9, th)[0] and not reads(0.3, 0.0, 0.0, th)[0]
    nm = dict(to_io=0.9, to_io_corrupted=0.5, offset_attention=0.3, name_copy=0.9, direct=1.0)
    assert ioi_role_test("name_mover", _ev(**nm), th)[0]
    assert not ioi_role_test("name_mover", _ev(**{**nm, "direct": -1.0}), th)[0]
    assert not ioi_role_test("name_mover", _ev(**{**nm, "offset_attention": 0.9, "to_io_corrupted": 0.9}), th)[0]
    assert not ioi_role_test("name_mover", _ev(**{**nm, "direct": 0.1}), th)[0]  # weak: 0.1 < 0.25 x 1.0
    neg = {**nm, "name_copy": 0.0, "name_suppression": 0.9, "direct": -0.5}
    assert ioi_role_test("negative_name_mover", _ev(**neg), th)[0]
    assert not ioi_role_test("name_mover", _ev(**neg), th)[0]
    si = dict(to_s2=0.9, to_s2_corrupted=0.1, offset_attention=0.9, name_movers=["a2.h0"])
    assert not ioi_role_test("s_inhibition", _ev(**si), th)[0]  # not measured
    assert ioi_role_test("s_inhibition", _ev(**si, s_inhibition_effect=0.5), th)[0]
    assert not ioi_role_test("s_inhibition", _ev(**si, s_inhibition_effect=0.05), th)[0]
    assert not ioi_role_test("s_inhibition", _ev(**{**si, "to_s2_corrupted": 0.9}, s_inhibition_effect=0.5), th)[0]
    bk = dict(to_io=0.0, name_copy=0.9, direct=0.0, name_movers=["a2.h0"], name_movers_direct=2.0)
    assert ioi_role_test("backup_name_mover", _ev(**bk, knockout_direct=0.5, knockout_to_io=0.8), th)[0]
    assert not ioi_role_test("backup_name_mover", _ev(**bk, knockout_direct=0.1, knockout_to_io=0.8), th)[0]
    assert not ioi_role_test("backup_name_mover", _ev(**bk, knockout_direct=0.5, knockout_to_io=0.1), th)[0]
