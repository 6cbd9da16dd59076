"""Attribution graphs against circuit-tracer 0.5 itself: same model, prompt and transcoders.

Three steps (docs/benchmarks.md, "Feature attribution against circuit-tracer"):

    python benchmarks/ct_compare.py make OUT                      # models + transcoders (project venv)
    PEER/venv/bin/python benchmarks/ct_compare.py peer OUT        # circuit-tracer's graphs (its own venv)
    python benchmarks/ct_compare.py compare OUT                   # ours, and the comparison (project venv)

`make` writes OUT/gpt2 (toy:ioi with `n_ctx` added, for TransformerLens), OUT/smallllama
(toy:llama-induction; the folder name avoids "llama", which TransformerLens' name handling trips on,
though its nnsight backend loads it) and random transcoders in circuit-tracer's formats for each
model: per-layer ReLU, per-layer JumpReLU with skip, cross-layer ReLU, cross-layer JumpReLU.
`peer` runs circuit-tracer's `attribute` (max_n_logits 5, desired_logit_prob 0.9, every feature) and
saves its Graph's adjacency and nodes as OUT/<case>.ct.npz. `compare` runs circuitry's `attribute`
with the same settings and prints, per case: tokens, features and logits equal or not, the adjacency's
relative error max|A_ours - A_ct| / max|A_ct|, and both tools' replacement and completeness scores.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

PROMPTS = {"gpt2": "When Mary and John went to the store, John gave a drink to",
           "smallllama": None}  # the induction toy has a word-level vocabulary: ids from its tokenizer below
TC_KINDS = [("plt-relu", False, False, "relu"), ("plt-jumprelu-skip", False, True, "jumprelu"),
            ("clt-relu", True, False, "relu"), ("clt-jumprelu", True, False, "jumprelu")]
# No cross-layer case with skip: circuit-tracer's cross-layer file format has no skip matrix (its loader
# reads W_enc_l / W_dec_l / b_enc_l / b_dec_l / threshold_l only), so it would attribute without one.
SETTINGS = {"max_n_logits": 5, "desired_logit_prob": 0.9}


def cases(out):
    for model in ("gpt2", "smallllama"):
        for kind, *_ in TC_KINDS:
            yield model, kind, os.path.join(out, model), os.path.join(out, f"tc-{model}-{kind}")


def prompt_for(out, model):
    with open(os.path.join(out, f"{model}.prompt.txt")) as f:
        return f.read()


def make(out):
    import torch

    from discovery.features.transcoders import Transcoders, save_transcoders
    from discovery.model.adapters import load_model
    from discovery.core.names import toy_model_dir

    os.makedirs(out, exist_ok=True)
    for name, toy in (("gpt2", "toy:ioi"), ("smallllama", "toy:llama-induction")):
        dst = os.path.join(out, name)
        shutil.copytree(toy_model_dir(toy), dst, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoints", "transcoders"))
        cfg_path = os.path.join(dst, "config.json")
        cfg = json.load(open(cfg_path))
        if cfg["model_type"] == "gpt2":
            cfg["n_ctx"] = cfg["n_positions"]
        json.dump(cfg, open(cfg_path, "w"), indent=1)
        tok_path = os.path.join(dst, "tokenizer_config.json")  # transformers 4 (circuit-tracer's) names the class
        tok_cfg = json.load(open(tok_path))
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        json.dump(tok_cfg, open(tok_path, "w"), indent=1)
        model = load_model(dst)
        prompt = PROMPTS[name]
        if prompt is None:  # a repeated segment: the induction toy's behaviour
            words = [model.tokenizer.decode([i]).strip() for i in (40, 41, 57, 63, 90, 101)]
            prompt = " ".join(words + words[:3])
        with open(os.path.join(out, f"{name}.prompt.txt"), "w") as f:
            f.write(prompt)
        a = model.adapter
        L, d, F = a.n_layers, a.d_model, 128
        for kind, clt, skip, act in TC_KINDS:
            g = torch.Generator().manual_seed(len(kind))
            tc = Transcoders(torch.randn(L, F, d, generator=g) / d**0.5, torch.randn(L, F, generator=g) * 0.3 - 0.3,
                             [torch.randn(F, L - l, d, generator=g) * 0.1 if clt else torch.randn(F, d, generator=g) * 0.1
                              for l in range(L)], torch.randn(L, d, generator=g) * 0.05,
                             W_skip=torch.randn(L, d, d, generator=g) * 0.05 if skip else None,
                             threshold=torch.rand(L, F, generator=g) * 0.2 if act == "jumprelu" else None,
                             activation=act, cross_layer=clt)
            save_transcoders(tc, os.path.join(out, f"tc-{name}-{kind}"), model_name=name, overwrite=True)
    print(f"models and transcoders in {out}")


def peer(out, only=None):
    import numpy as np
    import torch
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    import transformer_lens.loading_from_pretrained as tl_loading

    original = tl_loading.get_official_model_name
    tl_loading.get_official_model_name = lambda n: n if os.path.isdir(n) else original(n)
    for model_name, kind, model_dir, tc_dir in cases(out):
        if only and only not in f"{model_name}-{kind}":
            continue
        tcs, _ = load_transcoder_from_hub(os.path.abspath(tc_dir), device=torch.device("cpu"), dtype=torch.float32,
                                          lazy_encoder=False, lazy_decoder=False)
        backend = "transformerlens" if model_name == "gpt2" else "nnsight"
        model = ReplacementModel.from_pretrained_and_transcoders(os.path.abspath(model_dir), tcs, backend=backend,
                                                                 device=torch.device("cpu"), dtype=torch.float32)
        graph = attribute(prompt_for(out, model_name), model, batch_size=64, **SETTINGS)
        rs, cs = compute_graph_scores(graph)
        from circuit_tracer.utils.create_graph_files import create_graph_files
        import tempfile

        with tempfile.TemporaryDirectory() as d:  # its Neuronpedia JSON at the default thresholds
            create_graph_files(graph, slug="peer", output_path=d, scan="peer", node_threshold=0.8,
                               edge_threshold=0.98)
            shutil.copy(os.path.join(d, "peer.json"), os.path.join(out, f"{model_name}-{kind}.ct-np.json"))
        np.savez(os.path.join(out, f"{model_name}-{kind}.ct.npz"), adjacency=graph.adjacency_matrix.numpy(),
                 features=graph.active_features[graph.selected_features].numpy(),
                 activations=graph.activation_values[graph.selected_features].numpy(),
                 tokens=graph.input_tokens.cpu().numpy(),
                 logits=np.array([t.vocab_idx for t in graph.logit_targets]),
                 probs=graph.logit_probabilities.numpy(), scores=np.array([rs, cs]))
        print(f"{model_name}-{kind}: {graph.adjacency_matrix.shape[0]} nodes", flush=True)


def neuronpedia_diff(graph, ct_path, model_doc: dict) -> str:
    """Our pruned export (0.8 / 0.98) against circuit-tracer's create_graph_files JSON: same node ids and
    fields, same links; the largest difference of influence and of link weight relative to its max."""
    from discovery.io.export.feature_neuronpedia import feature_graph_to_neuronpedia
    from discovery.features.graph_file import graph_document

    if not os.path.exists(ct_path):
        return "-"
    theirs = json.load(open(ct_path))
    ours = feature_graph_to_neuronpedia(graph_document(graph, node_threshold=0.8, edge_threshold=0.98, model=model_doc))
    key = (lambda n: (n["node_id"], n["feature_type"], n["layer"], n["ctx_idx"], n["feature"], n["jsNodeId"]))
    a, b = sorted(ours["nodes"], key=key), sorted(theirs["nodes"], key=key)
    if [key(n) for n in a] != [key(n) for n in b]:
        return f"NODES DIFFER ({len(a)} vs {len(b)})"
    d_infl = max((abs((x["influence"] or 0) - (y["influence"] or 0)) for x, y in zip(a, b)), default=0.0)
    d_act = max((abs((x["activation"] or 0) - (y["activation"] or 0)) for x, y in zip(a, b)), default=0.0)
    la = sorted((x["source"], x["target"], x["weight"]) for x in ours["links"])
    lb = sorted((x["source"], x["target"], x["weight"]) for x in theirs["links"])
    if [x[:2] for x in la] != [x[:2] for x in lb]:
        return f"LINKS DIFFER ({len(la)} vs {len(lb)})"
    scale = max((abs(x[2]) for x in lb), default=1.0)
    d_w = max((abs(x[2] - y[2]) for x, y in zip(la, lb)), default=0.0) / scale
    meta = all(ours["metadata"][k] == theirs["metadata"][k] for k in ("prompt_tokens", "node_threshold"))
    return (f"{len(a)} nodes, {len(la)} links equal; influence ±{d_infl:.1e}, activation ±{d_act:.1e}, "
            f"weight rel. {d_w:.1e}{'' if meta else '; METADATA DIFFERS'}")


def compare(out):
    import numpy as np
    import torch

    from discovery.features.attribution import attribute
    from discovery.features.pruning import graph_scores
    from discovery.features.run import model_info
    from discovery.features.transcoders import load_transcoders
    from discovery.model.adapters import load_model

    rows = []
    worst = 0.0
    for model_name, kind, model_dir, tc_dir in cases(out):
        path = os.path.join(out, f"{model_name}-{kind}.ct.npz")
        if not os.path.exists(path):
            continue
        ct = np.load(path)
        model = load_model(model_dir, device="cpu")
        tc = load_transcoders(tc_dir, model=model, device="cpu")
        g = attribute(model, tc, prompt_for(out, model_name), max_logits=SETTINGS["max_n_logits"],
                      desired_logit_prob=SETTINGS["desired_logit_prob"])
        ours = g.square().numpy()
        same_tokens = list(ct["tokens"]) == g.tokens
        same_feats = ct["features"].shape == tuple(g.features.shape) and bool((ct["features"] == g.features.numpy()).all())
        same_logits = list(ct["logits"]) == g.logit_tokens
        rel = float(np.abs(ours - ct["adjacency"]).max() / np.abs(ct["adjacency"]).max()) \
            if ours.shape == ct["adjacency"].shape else float("inf")
        rs, cs = graph_scores(g)
        np_note = neuronpedia_diff(g, os.path.join(out, f"{model_name}-{kind}.ct-np.json"), model_info(model))
        worst = max(worst, rel)
        rows.append(f"| {model_name} | {kind} | {g.n_pos} | {g.n_features} | {g.n_logits} | "
                    f"{'yes' if same_tokens and same_feats and same_logits else 'NO'} | {rel:.2e} | "
                    f"{rs:.4f} / {float(ct['scores'][0]):.4f} | {cs:.4f} / {float(ct['scores'][1]):.4f} | {np_note} |")
    print("| model | transcoders | tokens | features | logits | same nodes | adjacency rel. error | "
          "replacement ours / ct | completeness ours / ct | pruned Neuronpedia JSON |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"worst relative error {worst:.2e} over {len(rows)} cases")
    return 0 if rows and worst <= 1e-4 else 1


if __name__ == "__main__":
    step, out = sys.argv[1], sys.argv[2]
    if step == "make":
        make(out)
    elif step == "peer":
        peer(out, sys.argv[3] if len(sys.argv) > 3 else None)
    elif step == "compare":
        sys.exit(compare(out))
    else:
        sys.exit(f"unknown step '{step}': make, peer or compare")
