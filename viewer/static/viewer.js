/* circuitry viewer: circuits (layered graph, node labels and evidence, edge slider, stored faithfulness
 * curve), diffs, timelines, and the job pages. Vanilla JS + SVG, no dependencies, so the same file can
 * be inlined into one self-contained HTML file or served under /ui.
 *
 * The page's configuration is the JSON in <script id="circuitry-config">: {mode, data?, ...}. With
 * `data` the page draws what it was given (standalone file); without it, it fetches from the API with
 * the token kept in localStorage. Every string that comes from a circuit or a label is inserted as
 * text (never as HTML): labels may come from an LLM. */
(function () {
  "use strict";

  var SVGNS = "http://www.w3.org/2000/svg";
  var TOKEN_KEY = "circuitry.token";
  var MAX_SLIDER = 1000; // edges beyond this are not drawable as SVG paths at interactive speed

  // ------------------------------------------------------------------ DOM helpers
  function h(tag, attrs) {
    var e = document.createElement(tag);
    setAttrs(e, attrs);
    for (var i = 2; i < arguments.length; i++) append(e, arguments[i]);
    return e;
  }
  function s(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    for (var i = 2; i < arguments.length; i++) append(e, arguments[i]);
    return e;
  }
  function setAttrs(e, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    });
  }
  function append(e) { // append(parent, child, child, ...): nodes, text, arrays of either; null skipped
    for (var i = 1; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) { child.forEach(function (c) { append(e, c); }); continue; }
      e.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function fmt(x, digits) {
    if (x === null || x === undefined || (typeof x === "number" && !isFinite(x))) return "n/a";
    if (typeof x !== "number") return String(x);
    return x.toFixed(digits === undefined ? 3 : digits);
  }
  function table(headers, rows, numeric) {
    numeric = numeric || [];
    return h("table", null,
      h("thead", null, h("tr", null, headers.map(function (t, i) {
        return h("th", { class: numeric.indexOf(i) >= 0 ? "num" : null, text: t });
      }))),
      h("tbody", null, rows.map(function (r) {
        return h("tr", null, r.map(function (c, i) {
          var td = h("td", { class: numeric.indexOf(i) >= 0 ? "num" : null });
          append(td, c);
          return td;
        }));
      })));
  }

  // ------------------------------------------------------------------ API (server mode)
  function token() { try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; } }
  function api(path, opts) {
    opts = opts || {};
    var headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    if (token()) headers.Authorization = "Bearer " + token();
    return fetch(path, Object.assign({}, opts, { headers: headers })).then(function (r) {
      if (r.ok) return r.json();
      return r.json().catch(function () { return {}; }).then(function (body) {
        var msg = (body && body.detail) || r.statusText;
        if (r.status === 401) msg += " (paste a token in the box at the top right)";
        throw new Error(r.status + ": " + msg);
      });
    });
  }
  function showError(root, err) {
    append(root, h("p", { class: "error", text: String(err && err.message ? err.message : err) }));
  }

  function topBar(server) {
    var bar = h("header", { class: "top" }, h("span", { class: "brand", text: "circuitry" }));
    if (!server) { append(bar, h("span", { class: "muted", text: "standalone viewer" })); return bar; }
    append(bar, [h("a", { href: "/ui/jobs", text: "Jobs" }), h("a", { href: "/ui/jobs/new", text: "Submit" }),
                 h("a", { href: "/ui/circuits", text: "Circuits" })]);
    var input = h("input", { type: "password", placeholder: "API token", value: token(), id: "token" });
    var state = h("span", { text: token() ? "token set" : "no token" });
    append(bar, h("span", { class: "token" }, "token", input,
      h("button", { text: "save", onclick: function () {
        try { localStorage.setItem(TOKEN_KEY, input.value.trim()); } catch (e) { /* storage disabled */ }
        state.textContent = input.value.trim() ? "token set" : "no token";
        location.reload();
      } }), state));
    return bar;
  }

  // ------------------------------------------------------------------ graph layout
  // Rows from the input (bottom) to the logits (top): per layer its key/value heads (GQA only), its
  // attention heads, then its MLP, which reads the residual after the heads.
  function layout(nodes) {
    var rows = [], byKey = {};
    function row(key, order, title) {
      if (!byKey[key]) { byKey[key] = { key: key, order: order, title: title, items: [] }; rows.push(byKey[key]); }
      return byKey[key];
    }
    nodes.forEach(function (n) {
      var L = n.layer;
      if (n.kind === "input") row("input", -1, "input").items.push(n);
      else if (n.kind === "logits") row("logits", 1e9, "logits").items.push(n);
      else if (n.kind === "kv_head") row("kv" + L, L * 3, "L" + L + " kv").items.push(n);
      else if (n.kind === "attention") row("a" + L, L * 3 + 1, "L" + L + " attn").items.push(n);
      else row("m" + L, L * 3 + 2, "L" + L + " mlp").items.push(n);
    });
    rows.sort(function (a, b) { return a.order - b.order; });
    var widest = Math.max.apply(null, rows.map(function (r) { return r.items.length; }));
    var gap = Math.max(30, Math.min(70, 900 / Math.max(widest, 1)));
    var left = 70, width = left + Math.max(widest, 4) * gap + 30, rowH = 72;
    var height = rows.length * rowH + 30, pos = {};
    rows.forEach(function (r, i) {
      var y = height - 30 - i * rowH;
      var span = (r.items.length - 1) * gap, x0 = left + (width - left - 30 - span) / 2;
      r.y = y;
      r.items.forEach(function (n, j) { pos[n.id] = { x: r.items.length === 1 ? left + (width - left - 30) / 2 : x0 + j * gap, y: y, node: n }; });
    });
    return { pos: pos, rows: rows, width: width, height: height + 10, gap: gap };
  }

  var SLOT_DX = { q: -6, k: 0, v: 6 };
  function edgePath(a, b, slot) {
    var x1 = a.x, y1 = a.y - 11, x2 = b.x + (SLOT_DX[slot] || 0), y2 = b.y + 11;
    var dy = Math.max(24, (y1 - y2) * 0.45);
    return "M" + x1 + "," + y1 + " C" + x1 + "," + (y1 - dy) + " " + x2 + "," + (y2 + dy) + " " + x2 + "," + y2;
  }
  function shortName(n) {
    if (n.kind === "attention") return "h" + n.head;
    if (n.kind === "kv_head") return "kv" + n.head;
    if (n.kind === "mlp") return "m" + n.layer;
    return n.id;
  }
  function drawNode(g, p, cls, onclick) {
    var n = p.node, wide = n.kind === "input" || n.kind === "logits", gEl;
    gEl = s("g", { class: cls, "data-id": n.id, transform: "translate(" + p.x + "," + p.y + ")", onclick: onclick });
    if (wide) append(gEl, s("rect", { x: -32, y: -11, width: 64, height: 22, rx: 6 }));
    else if (n.kind === "mlp") append(gEl, s("rect", { x: -13, y: -11, width: 26, height: 22, rx: 3 }));
    else append(gEl, s("circle", { r: 11 }));
    append(gEl, s("text", { "text-anchor": "middle", dy: "3.5", text: shortName(n) }));
    append(gEl, s("title", { text: n.id }));
    append(g, gEl);
    return gEl;
  }
  var positionNames = null;  // position-aware circuits with named template positions
  function posName(p) { return positionNames && positionNames[p] !== undefined ? p + " (" + positionNames[p] + ")" : "" + p; }
  function positionsOf(e) {  // position-aware circuits: the source position and the target position
    return e.src_pos === undefined || e.src_pos === null ? "" :
      "  \u00b7  positions " + posName(e.src_pos) + " \u2192 " + posName(e.dst_pos);
  }
  function edgeTitle(e, extra) {
    return e.source + " \u2192 " + e.target + "  \u00b7  slot " + e.slot + positionsOf(e) + "  \u00b7  score " +
      fmt(e.score, 4) + (extra ? "  \u00b7  " + extra : "");
  }

  // ------------------------------------------------------------------ node panel
  function labelsOf(c) {
    var out = {};
    (c.labels || []).forEach(function (l) { out[l.component] = l; });
    return out;
  }
  function tokens(list) {
    return (list || []).map(function (t) { return t.token + " (" + fmt(t.value, 2) + ")"; }).join(", ") || "none";
  }
  function nodePanel(panel, node, label, edges) {
    clear(panel);
    append(panel, h("h2", { text: node.id }),
      h("div", { class: "muted", text: node.kind + (node.layer !== null && node.layer !== undefined ? ", layer " + node.layer : "") +
        (node.head !== null && node.head !== undefined ? ", head " + node.head : "") + (node.in_circuit ? ", in the circuit" : ", not in the circuit") }));
    if (!label) {
      append(panel, h("p", { class: "muted", text: "No label for this component (the circuit is not labeled, or the component is not one of its heads or MLPs)." }));
    } else {
      append(panel, h("div", { class: "panel-label", id: "node-label", text: label.label }),
        h("p", { id: "node-description", text: label.description }),
        h("div", null, (label.role_tags || []).map(function (t) { return h("span", { class: "chip", text: t }); })),
        h("div", { class: "muted", text: "confidence " + fmt(label.confidence, 2) + " \u00b7 status " + label.status +
          (label.provenance ? " \u00b7 " + label.provenance.backend : "") }));
      var scores = Object.keys(label.scores || {}).map(function (k) {
        var sc = label.scores[k];
        return [k, sc.metric, fmt(sc.value), fmt(sc.random_baseline), (sc.n_positive || 0) + "/" + (sc.n_negative || 0)];
      });
      if (scores.length) append(panel, h("h3", { text: "Label score (held out)" }),
        table(["scorer", "metric", "score", "random label", "+/-"], scores, [2, 3]));
      evidencePanel(panel, label.evidence);
    }
    if (edges.length) {
      append(panel, h("h3", { text: "Edges shown" }), table(["edge", "slot", "score"], edges.map(function (e) {
        return [e.name, e.slot, fmt(e.score, 4)];
      }), [2]));
    }
  }
  function evidencePanel(panel, ev) {
    if (!ev) return;
    if (ev.kind === "head") {
      if (ev.patterns && ev.patterns.length) {
        append(panel, h("h3", { text: "Attention pattern scores" }), table(
          ["data", "prev", "dup", "induct", "sink", "self"],
          ev.patterns.map(function (p) {
            return [p.data.source + (p.data.split !== "all" ? " (" + p.data.split + ")" : ""), fmt(p.previous_token, 2),
                    fmt(p.duplicate_token, 2), fmt(p.induction, 2), fmt(p.sink, 2), fmt(p.self_attention, 2)];
          }), [1, 2, 3, 4, 5]));
      }
      if (ev.ov) append(panel, h("div", { class: "muted", text: "OV copying " + fmt(ev.ov.copying, 2) + ", suppression " +
        fmt(ev.ov.suppression, 2) + " (chance " + fmt(ev.ov.chance, 3) + ")" }));
      if (ev.top_pairs && ev.top_pairs.length) {
        append(panel, h("h3", { text: "Top attention (query \u2192 key)" }), h("div", { id: "top-pairs" }, table(
          ["query", "key", "pos", "weight"],
          ev.top_pairs.map(function (p) { return [p.query_token, p.key_token, p.query_pos + "\u2192" + p.key_pos, fmt(p.weight, 3)]; }),
          [3])));
      }
    } else if (ev.kind === "mlp") {
      if (ev.top_contexts && ev.top_contexts.length) {
        append(panel, h("h3", { text: "Top-activating contexts" }), table(["context", "activation"],
          ev.top_contexts.map(function (c) { return [(c.tokens || []).join(" "), fmt(c.activation, 2)]; }), [1]));
      }
    }
    if (ev.logits) {
      append(panel, h("h3", { text: "Direct effect on the logits" }),
        h("div", { id: "promoted" }, h("b", { text: "promoted: " }), tokens(ev.logits.promoted)),
        h("div", null, h("b", { text: "suppressed: " }), tokens(ev.logits.suppressed)));
      if (ev.logits.answer_minus_wrong !== null && ev.logits.answer_minus_wrong !== undefined)
        append(panel, h("div", { class: "muted", text: "logit(answer) \u2212 logit(wrong): " + fmt(ev.logits.answer_minus_wrong, 3) }));
    }
  }

  // ------------------------------------------------------------------ faithfulness curve
  function curvePlot(metrics, totalEdges) {
    var W = 420, H = 200, L = 44, R = 12, T = 12, B = 32;
    var svg = s("svg", { class: "curve", viewBox: "0 0 " + W + " " + H, width: W, height: H, id: "curve" });
    var curves = [["curve_absolute", "by |score|", "#5b3fa8", null], ["curve_signed", "by signed score", "#e08b00", "5 3"]];
    var pts = [];
    curves.forEach(function (c) { (metrics[c[0]] || []).forEach(function (p) { if (p.faithfulness !== null) pts.push(p); }); });
    if (!pts.length) return h("p", { class: "muted", text: "No faithfulness curve stored (discover with the curve on)." });
    var fs = pts.map(function (p) { return p.faithfulness; });
    var fmin = Math.min(0, Math.min.apply(null, fs)), fmax = Math.max(1, Math.max.apply(null, fs));
    var lx0 = Math.log10(0.1), lx1 = Math.log10(100);
    function X(pct) { return L + (Math.log10(Math.max(pct, 0.1)) - lx0) / (lx1 - lx0) * (W - L - R); }
    function Y(f) { return T + (fmax - f) / (fmax - fmin) * (H - T - B); }
    append(svg, s("line", { x1: L, x2: W - R, y1: Y(0), y2: Y(0), stroke: "#c9ced8" }),
      s("line", { x1: L, x2: W - R, y1: Y(1), y2: Y(1), stroke: "#c9ced8", "stroke-dasharray": "2 2" }),
      s("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#8a93a3" }));
    [0.1, 1, 10, 100].forEach(function (p) {
      append(svg, s("text", { x: X(p), y: H - B + 14, "text-anchor": "middle", "font-size": 10, fill: "#5b6475", text: p + "%" }));
    });
    [fmin, 0, 1, fmax].filter(function (v, i, a) { return a.indexOf(v) === i; }).forEach(function (v) {
      append(svg, s("text", { x: L - 4, y: Y(v) + 3, "text-anchor": "end", "font-size": 10, fill: "#5b6475", text: fmt(v, 1) }));
    });
    append(svg, s("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", "font-size": 10, fill: "#5b6475", text: "edges kept (% of the graph, log scale)" }));
    curves.forEach(function (c, i) {
      var cp = (metrics[c[0]] || []).filter(function (p) { return p.faithfulness !== null; });
      if (!cp.length) return;
      append(svg, s("polyline", { fill: "none", stroke: c[2], "stroke-width": 2, "stroke-dasharray": c[3],
        points: cp.map(function (p) { return X(p.percent) + "," + Y(p.faithfulness); }).join(" ") }));
      append(svg, s("text", { x: W - R - 4, y: H - B - 8 - 12 * i, "text-anchor": "end", "font-size": 10, fill: c[2], text: c[1] }));
    });
    var marker = s("g", { id: "curve-marker" });
    append(svg, marker);
    var cf = metrics.faithfulness, cn = metrics.n_edges;
    if (cf !== null && cf !== undefined && totalEdges) {
      append(svg, s("circle", { cx: X(100 * cn / totalEdges), cy: Y(cf), r: 4, fill: "#1a9850" },
        s("title", { text: "the circuit: " + cn + " edges, faithfulness " + fmt(cf) })));
    }
    svg.mark = function (k) {
      clear(marker);
      var pct = totalEdges ? 100 * k / totalEdges : 0, cp = (metrics.curve_absolute || []).filter(function (p) { return p.faithfulness !== null; });
      var f = interp(cp, pct);
      append(marker, s("line", { x1: X(pct), x2: X(pct), y1: T, y2: H - B, stroke: "#e08b00", "stroke-width": 1 }));
      if (f !== null) append(marker, s("circle", { cx: X(pct), cy: Y(f), r: 4, fill: "#e08b00" }));
      return { pct: pct, f: f };
    };
    return svg;
  }
  function interp(cp, pct) { // the stored curve at pct, linear in log(percent); clamped at the ends
    if (!cp.length) return null;
    if (pct <= cp[0].percent) return cp[0].faithfulness;
    for (var i = 1; i < cp.length; i++) {
      if (pct <= cp[i].percent) {
        var a = Math.log10(cp[i - 1].percent), b = Math.log10(cp[i].percent), t = (Math.log10(pct) - a) / (b - a);
        return cp[i - 1].faithfulness + t * (cp[i].faithfulness - cp[i - 1].faithfulness);
      }
    }
    return cp[cp.length - 1].faithfulness;
  }

  // ------------------------------------------------------------------ circuit view
  function edgeOrder(c) {
    // The slider shows the first k of: the circuit's edges by |score|, then the other scored edges by
    // |score|. At k = the circuit's size it draws exactly the circuit.
    function mag(e) { return e.score === null || e.score === undefined ? -1 : Math.abs(e.score); }
    var inside = c.edges.filter(function (e) { return e.in_circuit; }).sort(function (a, b) { return mag(b) - mag(a); });
    var outside = c.edges.filter(function (e) { return !e.in_circuit && e.score !== null && e.score !== undefined; })
      .sort(function (a, b) { return mag(b) - mag(a); });
    return inside.concat(outside);
  }
  function circuitSummary(c, root) {
    var m = c.metrics || {};
    append(root, h("h1", { text: (c.model && c.model.name) + " \u00b7 " + (c.task && c.task.name) }),
      h("div", { class: "summary", id: "summary" },
        h("span", null, "method ", h("b", { text: c.method.name })),
        h("span", null, "selection ", h("b", { text: c.selection.kind + (c.selection.value !== null ? " " + c.selection.value : "") })),
        h("span", null, "edges ", h("b", { text: m.n_edges + " of " + c.edges.length })),
        h("span", null, "nodes ", h("b", { text: String(m.n_nodes) })),
        h("span", null, "faithfulness ", h("b", { text: fmt(m.faithfulness) })),
        h("span", null, "CPR ", h("b", { text: fmt(m.cpr) }), " CMD ", h("b", { text: fmt(m.cmd) })),
        h("span", null, "metric ", h("b", { text: m.metric })),
        c.model.revision ? h("span", null, "revision ", h("b", { text: c.model.revision })) : null));
  }
  function legend(items) {
    return h("div", { class: "legend" }, items.map(function (it) {
      return h("span", null, h("span", { class: "swatch", style: "background:" + it[0] }), it[1]);
    }));
  }

  function renderCircuit(root, c) {
    positionNames = c.positions && c.positions.names ? c.positions.names : null;
    circuitSummary(c, root);
    var order = edgeOrder(c), labels = labelsOf(c), nIn = c.edges.filter(function (e) { return e.in_circuit; }).length;
    var lay = layout(c.nodes), selected = null;
    var svg = s("svg", { class: "graph", id: "graph", viewBox: "0 0 " + lay.width + " " + lay.height, width: Math.round(lay.width * 1.3), height: Math.round(lay.height * 1.3) });
    var gRows = s("g"), gEdges = s("g", { id: "edges" }), gNodes = s("g", { id: "nodes" });
    append(svg, gRows, gEdges, gNodes);
    lay.rows.forEach(function (r) { append(gRows, s("text", { class: "row", x: 6, y: r.y + 3, text: r.title })); });
    var panel = h("div", { class: "card", id: "panel" }, h("p", { class: "muted", text: "Click a node to see its label and evidence." }));
    var hover = h("div", { class: "hover", id: "hover", text: "Hover an edge to see its slot and score." });
    var max = Math.min(order.length, Math.max(nIn, MAX_SLIDER));
    var slider = h("input", { type: "range", id: "edge-slider", min: 0, max: max, value: nIn, step: 1 });
    var count = h("span", { id: "edge-count" });
    var curve = curvePlot(c.metrics || {}, c.edges.length), curveText = h("div", { class: "muted", id: "curve-text" });
    var shown = [];

    function draw(k) {
      clear(gEdges); clear(gNodes);
      shown = order.slice(0, k);
      var maxAbs = 0, touched = {};
      shown.forEach(function (e) { if (e.score !== null) maxAbs = Math.max(maxAbs, Math.abs(e.score)); touched[e.source] = touched[e.target] = true; });
      shown.forEach(function (e) {
        var a = lay.pos[e.source], b = lay.pos[e.target];
        if (!a || !b) return;
        var w = e.score === null || !maxAbs ? 0.3 : Math.sqrt(Math.abs(e.score) / maxAbs); // sqrt: weak edges stay visible
        var sign = e.score === null || e.score === 0 ? "none" : e.score > 0 ? "pos" : "neg";
        var p = s("path", { class: "edge " + sign + (e.in_circuit ? "" : " outside"), d: edgePath(a, b, e.slot),
          "stroke-width": (0.8 + 5 * w).toFixed(2), "stroke-opacity": (0.35 + 0.65 * w).toFixed(2),
          "data-name": e.name, "data-slot": e.slot,
          onmouseenter: function () { hover.textContent = edgeTitle(e, e.in_circuit ? "in circuit" : "not in circuit"); } },
          s("title", { text: edgeTitle(e) }));
        append(gEdges, p);
      });
      Object.keys(lay.pos).forEach(function (id) {
        var p = lay.pos[id], on = !!touched[id];
        var cls = (on ? "node" : "ghost") + (labels[id] ? " labeled" : "") + (selected === id ? " selected" : "");
        drawNode(gNodes, p, cls, function () { select(id); });
      });
      count.textContent = k + " edges shown (" + nIn + " in the circuit, " + c.edges.length + " in the graph), " +
        Object.keys(touched).length + " nodes";
      var at = curve.mark ? curve.mark(k) : null;
      if (at) curveText.textContent = k + " edges = " + fmt(at.pct, 2) + "% of the graph; stored curve (by |score|) there: faithfulness " + fmt(at.f);
    }
    function select(id) {
      selected = id;
      Array.prototype.forEach.call(gNodes.childNodes, function (g) { g.classList.toggle("selected", g.getAttribute("data-id") === id); });
      nodePanel(panel, lay.pos[id].node, labels[id], shown.filter(function (e) { return e.source === id || e.target === id; }));
    }
    slider.addEventListener("input", function () { draw(parseInt(slider.value, 10)); });
    append(root,
      h("div", { class: "controls" }, h("label", { for: "edge-slider", text: "edges shown" }), slider, count),
      legend([["var(--pos)", "score > 0"], ["var(--neg)", "score < 0"], ["#8a93a3", "dashed: outside the circuit"],
              ["#5b3fa8", "labeled node"]]),
      h("div", { class: "layout" },
        h("div", { class: "card" }, svg, hover),
        h("div", null, panel, h("div", { class: "card" }, h("h3", { text: "Faithfulness curve (stored)" }), curve, curveText))));
    draw(nIn);
  }

  // ------------------------------------------------------------------ diff view
  function renderDiff(root, a, b, names) {
    names = names || ["A", "B"];
    var inA = {}, inB = {}, byName = {};
    a.edges.forEach(function (e) { if (e.in_circuit) { inA[e.name] = e; byName[e.name] = e; } });
    b.edges.forEach(function (e) { if (e.in_circuit) { inB[e.name] = e; byName[e.name] = e; } });
    var gained = Object.keys(inB).filter(function (n) { return !inA[n]; }).sort();
    var lost = Object.keys(inA).filter(function (n) { return !inB[n]; }).sort();
    var kept = Object.keys(inA).filter(function (n) { return inB[n]; }).sort();
    var union = gained.length + lost.length + kept.length;
    var nodes = b.nodes.slice(), seen = {};
    nodes.forEach(function (n) { seen[n.id] = true; });
    a.nodes.forEach(function (n) { if (!seen[n.id]) nodes.push(n); });
    var nodesA = {}, nodesB = {};
    a.nodes.forEach(function (n) { if (n.in_circuit) nodesA[n.id] = true; });
    b.nodes.forEach(function (n) { if (n.in_circuit) nodesB[n.id] = true; });
    var la = labelsOf(a), lb = labelsOf(b);
    append(root, h("h1", { text: "Diff: " + names[0] + " \u2192 " + names[1] }),
      h("div", { class: "summary", id: "summary" },
        h("span", null, names[0] + ": ", h("b", { text: a.metrics.n_edges + " edges, faithfulness " + fmt(a.metrics.faithfulness) })),
        h("span", null, names[1] + ": ", h("b", { text: b.metrics.n_edges + " edges, faithfulness " + fmt(b.metrics.faithfulness) })),
        h("span", null, "gained ", h("b", { id: "n-gained", text: String(gained.length) })),
        h("span", null, "lost ", h("b", { id: "n-lost", text: String(lost.length) })),
        h("span", null, "kept ", h("b", { text: String(kept.length) })),
        h("span", null, "Jaccard ", h("b", { text: fmt(union ? kept.length / union : 1) })),
        a.task.content_hash !== b.task.content_hash ? h("span", { class: "muted", text: "(different task data)" }) : null));
    var lay = layout(nodes);
    var svg = s("svg", { class: "graph", id: "graph", viewBox: "0 0 " + lay.width + " " + lay.height, width: Math.round(lay.width * 1.3), height: Math.round(lay.height * 1.3) });
    var gEdges = s("g", { id: "edges" }), gNodes = s("g", { id: "nodes" });
    lay.rows.forEach(function (r) { append(svg, s("text", { class: "row", x: 6, y: r.y + 3, text: r.title })); });
    append(svg, gEdges, gNodes);
    var hover = h("div", { class: "hover", id: "hover", text: "Hover an edge to see its slot and scores." });
    var panel = h("div", { class: "card", id: "panel" }, h("p", { class: "muted", text: "Click a node to compare its labels." }));
    var touched = {};
    [["kept", kept], ["lost", lost], ["gained", gained]].forEach(function (grp) {
      grp[1].forEach(function (name) {
        var e = byName[name], pa = lay.pos[e.source], pb = lay.pos[e.target];
        if (!pa || !pb) return;
        touched[e.source] = touched[e.target] = true;
        var sa = inA[name] ? inA[name].score : null, sb = inB[name] ? inB[name].score : null;
        var text = e.source + " \u2192 " + e.target + "  \u00b7  slot " + e.slot + positionsOf(e) + "  \u00b7  " + grp[0] + "  \u00b7  score " +
          names[0] + " " + fmt(sa, 4) + ", " + names[1] + " " + fmt(sb, 4);
        append(gEdges, s("path", { class: "edge " + grp[0], d: edgePath(pa, pb, e.slot), "stroke-width": grp[0] === "kept" ? 1.5 : 2.5,
          "data-name": name, "data-slot": e.slot, onmouseenter: function () { hover.textContent = text; } }, s("title", { text: text })));
      });
    });
    Object.keys(lay.pos).forEach(function (id) {
      var cls = touched[id] ? "node" : "ghost";
      if (nodesB[id] && !nodesA[id]) cls += " gained";
      if (nodesA[id] && !nodesB[id]) cls += " lost";
      drawNode(gNodes, lay.pos[id], cls, function () {
        clear(panel);
        append(panel, h("h2", { text: id }),
          h("div", { class: "muted", text: (nodesA[id] ? "in " : "not in ") + names[0] + ", " + (nodesB[id] ? "in " : "not in ") + names[1] }));
        [[names[0], la[id]], [names[1], lb[id]]].forEach(function (x) {
          append(panel, h("h3", { text: x[0] }), x[1] ? h("div", null, h("div", { class: "panel-label", text: x[1].label }),
            h("div", null, (x[1].role_tags || []).map(function (t) { return h("span", { class: "chip", text: t }); })),
            h("p", { text: x[1].description })) : h("p", { class: "muted", text: "no label" }));
        });
      });
    });
    append(root, legend([["var(--gained)", "gained (in " + names[1] + " only)"], ["var(--lost)", "lost (in " + names[0] + " only)"],
                         ["var(--kept)", "kept (in both)"]]),
      h("div", { class: "layout" }, h("div", { class: "card" }, svg, hover), panel));
    var changes = Object.keys(la).filter(function (k) {
      return lb[k] && (la[k].label !== lb[k].label || (la[k].role_tags || []).join() !== (lb[k].role_tags || []).join());
    }).map(function (k) { return [k, la[k].label, lb[k].label]; });
    if (changes.length) append(root, h("h2", { text: "Label changes" }), h("div", { class: "card" }, table(["component", names[0], names[1]], changes)));
  }

  // ------------------------------------------------------------------ timeline view
  function pointName(p, i) { return p.revision || (p.step !== null && p.step !== undefined ? "step " + p.step : "checkpoint " + (i + 1)); }
  function renderTimeline(root, points, server, title) {
    append(root, h("h1", { text: title || "Circuit timeline" }));
    if (!points.length) { append(root, h("p", { class: "muted", text: "No checkpoints yet." })); return; }
    var W = 640, H = 220, L = 48, R = 48, T = 14, B = 30;
    var xs = points.map(function (p, i) { return p.step !== null && p.step !== undefined ? p.step : i; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var ne = points.map(function (p) { return p.n_edges; }), emax = Math.max(1, Math.max.apply(null, ne));
    function X(x) { return x1 === x0 ? (L + W - R) / 2 : L + (x - x0) / (x1 - x0) * (W - L - R); }
    function YE(v) { return T + (1 - v / emax) * (H - T - B); }
    function YF(v) { return T + (1 - Math.max(0, Math.min(1.2, v)) / 1.2) * (H - T - B); }
    var svg = s("svg", { class: "curve", id: "timeline", viewBox: "0 0 " + W + " " + H, width: W, height: H });
    append(svg, s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#8a93a3" }),
      s("polyline", { fill: "none", stroke: "#2166ac", "stroke-width": 2, points: points.map(function (p, i) { return X(xs[i]) + "," + YE(p.n_edges); }).join(" ") }),
      s("polyline", { fill: "none", stroke: "#e08b00", "stroke-width": 2, "stroke-dasharray": "5 3",
        points: points.filter(function (p) { return p.faithfulness !== null; }).map(function (p) { return X(xs[points.indexOf(p)]) + "," + YF(p.faithfulness); }).join(" ") }),
      s("text", { x: L - 6, y: YE(emax) + 4, "text-anchor": "end", "font-size": 10, fill: "#2166ac", text: String(emax) }),
      s("text", { x: W - R + 6, y: YF(1) + 4, "font-size": 10, fill: "#e08b00", text: "f=1" }),
      s("text", { x: L, y: H - 8, "font-size": 10, fill: "#5b6475", text: pointName(points[0], 0) }),
      s("text", { x: W - R, y: H - 8, "text-anchor": "end", "font-size": 10, fill: "#5b6475", text: pointName(points[points.length - 1], points.length - 1) }));
    points.forEach(function (p, i) {
      append(svg, s("circle", { class: "point", cx: X(xs[i]), cy: YE(p.n_edges), r: 4, fill: "#2166ac" },
        s("title", { text: pointName(p, i) + ": " + p.n_edges + " edges, faithfulness " + fmt(p.faithfulness) })));
    });
    append(root, legend([["#2166ac", "edges in the circuit"], ["#e08b00", "faithfulness"]]), h("div", { class: "card" }, svg));
    var rows = points.map(function (p, i) {
      var link = null;
      if (server && p.circuit_id) {
        link = h("span", null, h("a", { href: "/ui/circuits/" + encodeURIComponent(p.circuit_id), text: "view" }),
          i > 0 && points[i - 1].circuit_id ? [" \u00b7 ", h("a", { href: "/ui/diff/" + encodeURIComponent(points[i - 1].circuit_id) + "/" +
            encodeURIComponent(p.circuit_id), text: "diff" })] : null);
      }
      var roles = Object.keys(p.roles || {}).map(function (t) { return t + ": " + p.roles[t].join(" "); }).join("; ");
      return [pointName(p, i), p.step === null || p.step === undefined ? "" : String(p.step), String(p.n_edges), String(p.n_nodes),
        fmt(p.faithfulness), fmt(p.behaviour), h("span", { class: "entered", text: (p.entered || []).join(" ") }),
        h("span", { class: "left", text: (p.left || []).join(" ") }), roles, link];
    });
    append(root, h("h2", { text: "Checkpoints" }), h("div", { class: "card" }, table(
      ["revision", "step", "edges", "nodes", "faithfulness", "behaviour", "entered", "left", "roles", ""], rows, [1, 2, 3, 4, 5])));
  }

  // ------------------------------------------------------------------ job pages (server only)
  function progressBar(p) {
    return h("div", { class: "bar" }, h("div", { style: "width:" + Math.round(100 * (p || 0)) + "%" }));
  }
  function statusSpan(st) { return h("span", { class: "status-" + st, text: st }); }

  function renderJobs(root) {
    append(root, h("h1", { text: "Jobs" }), h("p", null, h("a", { href: "/ui/jobs/new", text: "Submit a job" })));
    var box = h("div", { class: "card", id: "jobs" }, h("p", { class: "muted", text: "loading\u2026" }));
    append(root, box);
    function load() {
      api("/v1/jobs?limit=50").then(function (page) {
        clear(box);
        if (!page.items.length) { append(box, h("p", { class: "muted", text: "No jobs yet." })); return; }
        append(box, table(["job", "status", "model", "task", "method", "progress", "message", "created", "circuit"],
          page.items.map(function (j) {
            return [h("a", { href: "/ui/jobs/" + encodeURIComponent(j.id), text: j.id.slice(0, 8) }), statusSpan(j.status), j.model, j.task,
              j.method, progressBar(j.progress), j.error || j.message || "", j.created_at.replace("T", " ").slice(0, 19),
              j.circuit_id ? h("a", { href: "/ui/circuits/" + encodeURIComponent(j.circuit_id), text: "view" }) : ""];
          })));
      }).catch(function (e) { clear(box); showError(box, e); });
    }
    load();
    setInterval(load, 2000);
  }

  function renderJob(root, id) {
    append(root, h("h1", { text: "Job " + id }));
    var head = h("div", { class: "summary", id: "job-status" }), bar = h("div"), events = h("pre", { class: "events", id: "events" });
    var result = h("div", { id: "job-result" });
    append(root, h("div", { class: "card" }, head, bar, result), h("h2", { text: "Events" }), events);
    var done = false;
    function show(j) {
      clear(head); clear(bar); clear(result);
      append(head, h("span", null, "status ", statusSpan(j.status)), h("span", null, "attempt " + j.attempt + "/" + j.max_attempts),
        h("span", null, j.model + " \u00b7 " + j.task + " \u00b7 " + j.method), h("span", { class: "muted", text: j.message || "" }));
      append(bar, progressBar(j.status === "succeeded" ? 1 : j.progress));
      if (j.error) append(result, h("p", { class: "error", text: j.error }));
      if (j.circuit_id) append(result, h("p", null, h("a", { href: "/ui/circuits/" + encodeURIComponent(j.circuit_id), id: "circuit-link", text: "View the circuit" })));
      done = ["succeeded", "failed", "cancelled"].indexOf(j.status) >= 0;
    }
    function refresh() { return api("/v1/jobs/" + encodeURIComponent(id)).then(show); }
    function addEvent(e) { events.textContent += e.at.slice(11, 23) + "  " + e.kind + "  " + e.status + "  " + (e.progress === null ? "" : fmt(e.progress, 2)) + "  " + (e.message || "") + "\n"; }
    // Live events: EventSource cannot send the Authorization header, so read the server-sent event
    // stream through fetch; fall back to polling where streaming bodies are not available.
    function stream() {
      var headers = { Accept: "text/event-stream" };
      if (token()) headers.Authorization = "Bearer " + token();
      return fetch("/v1/jobs/" + encodeURIComponent(id) + "/events", { headers: headers }).then(function (r) {
        if (!r.ok || !r.body || !r.body.getReader) throw new Error("no stream");
        var reader = r.body.getReader(), dec = new TextDecoder(), buf = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) return refresh();
            buf += dec.decode(chunk.value, { stream: true });
            var parts = buf.split("\n\n");
            buf = parts.pop();
            parts.forEach(function (block) {
              var kind = "message", data = "";
              block.split("\n").forEach(function (line) {
                if (line.indexOf("event: ") === 0) kind = line.slice(7);
                else if (line.indexOf("data: ") === 0) data += line.slice(6);
              });
              if (!data) return;
              if (kind === "end") { refresh(); return; }
              try { addEvent(JSON.parse(data)); } catch (err) { /* keep-alive or partial */ }
              refresh();
            });
            return pump();
          });
        }
        return pump();
      });
    }
    refresh().then(function () {
      return stream().catch(function () {
        var timer = setInterval(function () { refresh().then(function () { if (done) clearInterval(timer); }); }, 1000);
      });
    }).catch(function (e) { showError(root, e); });
  }

  function renderSubmit(root, cfg) {
    append(root, h("h1", { text: "Submit a job" }));
    function options(list) { return list.map(function (t) { return h("option", { value: t, text: t }); }); }
    var f = {
      model: h("input", { name: "model", value: "toy:induction", required: true }),
      task: h("select", { name: "task" }, options(cfg.tasks || ["induction", "ioi"])),
      n: h("input", { name: "n", type: "number", value: 32, min: 1 }),
      seed: h("input", { name: "seed", type: "number", value: 1, min: 0 }),
      method: h("select", { name: "method" }, options(cfg.methods || ["eap-ig"])),
      metric: h("select", { name: "metric" }, [h("option", { value: "", text: "task default" })].concat(options(cfg.metrics || []))),
      top_n: h("input", { name: "top_n", type: "number", value: 20, min: 1 }),
      curve: h("input", { name: "curve", type: "checkbox", checked: true }),
      labeling: h("select", { name: "labeling" }, options(["heuristic", "none", "openai"]))
    };
    var msg = h("div", { id: "submit-result" });
    var form = h("form", { class: "job card", id: "job-form" },
      Object.keys(f).map(function (k) { return h("div", null, h("label", { text: k.replace("_", " ") }), f[k]); }),
      h("p", null, h("button", { type: "submit", text: "Submit" })), msg);
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      clear(msg);
      var body = { model: { name: f.model.value.trim() }, task: { builtin: f.task.value, n: +f.n.value, seed: +f.seed.value },
        method: { name: f.method.value, metric: f.metric.value || null, curve: f.curve.checked },
        selection: { top_n: +f.top_n.value }, labeling: { backend: f.labeling.value } };
      api("/v1/jobs", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } })
        .then(function (j) { location.href = "/ui/jobs/" + encodeURIComponent(j.id); })
        .catch(function (e) { showError(msg, e); });
    });
    append(root, form);
  }

  function renderCircuitList(root) {
    append(root, h("h1", { text: "Circuits" }));
    var box = h("div", { class: "card", id: "circuits" }, h("p", { class: "muted", text: "loading\u2026" }));
    var go = h("button", { text: "Diff A \u2192 B", onclick: function () {
      var a = document.querySelector("input[name=a]:checked"), b = document.querySelector("input[name=b]:checked");
      if (a && b) location.href = "/ui/diff/" + encodeURIComponent(a.value) + "/" + encodeURIComponent(b.value);
    } });
    append(root, box, h("p", null, go));
    api("/v1/circuits?limit=100").then(function (page) {
      clear(box);
      if (!page.items.length) { append(box, h("p", { class: "muted", text: "No circuits yet." })); return; }
      append(box, table(["circuit", "model", "task", "method", "edges", "nodes", "faithfulness", "labeled", "created", "A", "B"],
        page.items.map(function (c) {
          return [h("a", { href: "/ui/circuits/" + encodeURIComponent(c.id), text: c.id.slice(0, 8) }), c.model + (c.revision ? "@" + c.revision : ""),
            c.task, c.method, String(c.n_edges), String(c.n_nodes), fmt(c.faithfulness), c.labeled ? "yes" : "",
            c.created_at.replace("T", " ").slice(0, 19), h("input", { type: "radio", name: "a", value: c.id }), h("input", { type: "radio", name: "b", value: c.id })];
        }), [4, 5, 6]));
    }).catch(function (e) { clear(box); showError(box, e); });
  }

  function renderIndex(root) {
    append(root, h("h1", { text: "circuitry" }), h("div", { class: "card" },
      h("p", null, "Paste an API token (from ", h("code", { text: "circuitry tokens create --name NAME" }),
        ") in the box at the top right; it stays in this browser's localStorage and is sent only to this server."),
      h("ul", null, h("li", null, h("a", { href: "/ui/jobs", text: "Jobs" }), ": list and live status"),
        h("li", null, h("a", { href: "/ui/jobs/new", text: "Submit a job" })),
        h("li", null, h("a", { href: "/ui/circuits", text: "Circuits" }), ": view one, or diff two"))));
  }

  // GET /v1/watches/{id}/timeline: {watch_id, source, tasks: [{task, checkpoints, points}]}, one
  // timeline per task, with the checkpoints' job states (a checkpoint still running has no point yet).
  function renderWatch(root, body) {
    var tasks = Array.isArray(body) ? [{ task: "", points: body, checkpoints: [] }] : body.tasks || [];
    if (!tasks.length) append(root, h("p", { class: "muted", text: "No checkpoints scanned yet." }));
    tasks.forEach(function (t) {
      var sec = h("section", { class: "watch-task" });
      append(root, sec);
      renderTimeline(sec, t.points || [], true, "Watch " + (body.watch_id || "") + (t.task ? " \u00b7 " + t.task : ""));
      if ((t.checkpoints || []).length) {
        append(sec, h("h3", { text: "Checkpoint jobs" }), h("div", { class: "card" }, table(["checkpoint", "step", "status", "job", "error"],
          t.checkpoints.map(function (c) {
            return [c.checkpoint, c.step === null ? "" : String(c.step), statusSpan(c.status),
              h("a", { href: "/ui/jobs/" + encodeURIComponent(c.job_id), text: c.job_id.slice(0, 8) }), c.error || ""];
          }), [1])));
      }
    });
  }

  // ------------------------------------------------------------------ entry
  function main() {
    var cfg = JSON.parse(document.getElementById("circuitry-config").textContent);
    var server = !cfg.data;
    var app = document.getElementById("app");
    append(app, topBar(server));
    var root = h("main");
    append(app, root);
    var d = cfg.data;
    try {
      if (cfg.mode === "circuit") {
        if (d) renderCircuit(root, d.circuit);
        else api("/v1/circuits/" + encodeURIComponent(cfg.id)).then(function (c) { renderCircuit(root, c); }).catch(function (e) { showError(root, e); });
      } else if (cfg.mode === "diff") {
        if (d) renderDiff(root, d.a, d.b, d.names);
        else Promise.all([api("/v1/circuits/" + encodeURIComponent(cfg.a)), api("/v1/circuits/" + encodeURIComponent(cfg.b))])
          .then(function (cs) { renderDiff(root, cs[0], cs[1], [cfg.a.slice(0, 8), cfg.b.slice(0, 8)]); }).catch(function (e) { showError(root, e); });
      } else if (cfg.mode === "timeline") {
        if (d) renderTimeline(root, d.points, false, d.title);
        else api("/v1/watches/" + encodeURIComponent(cfg.watch) + "/timeline")
          .then(function (body) { renderWatch(root, body); }).catch(function (e) { showError(root, e); });
      } else if (cfg.mode === "jobs") renderJobs(root);
      else if (cfg.mode === "job") renderJob(root, cfg.id);
      else if (cfg.mode === "submit") renderSubmit(root, cfg);
      else if (cfg.mode === "circuits") renderCircuitList(root);
      else renderIndex(root);
    } catch (e) {
      showError(root, e);
      throw e;
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
