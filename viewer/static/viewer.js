/* circuitry viewer: circuits (layered graph, node labels and evidence, edge slider, stored faithfulness
 * curve), diffs, timelines, circuit lists (the job pages are jobs.js). Vanilla JS + SVG, no dependencies, so the same file can
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
  // viewer/render.py embeds the circuit's edges and at most MAX_SLIDER others (the slider's reach)
  var DETAIL_MAX = 250;    // more drawn edges than this: the graph opens as an overview (renderCircuit)
  var OVERVIEW_TOP = 80;   // the overview draws the strongest this many edges one by one
  var DETAIL_ZOOM = 2;     // zoomed in this far (or hovering a node), every drawn edge is shown

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

  // One tooltip for the whole page (a positioned div, not the browser's native title): multi-line text
  // that follows the pointer and stays inside the window.
  var tipEl = null;
  function tip(ev, text) {
    if (!tipEl) { tipEl = h("div", { class: "tooltip", id: "tooltip", role: "tooltip" }); document.body.appendChild(tipEl); }
    if (text !== undefined) tipEl.textContent = text;
    tipEl.style.display = "block";
    var r = tipEl.getBoundingClientRect(), x = ev.clientX + 14, y = ev.clientY + 16;
    if (x + r.width > window.innerWidth - 4) x = Math.max(4, ev.clientX - r.width - 12);
    if (y + r.height > window.innerHeight - 4) y = Math.max(4, ev.clientY - r.height - 12);
    tipEl.style.left = x + "px"; tipEl.style.top = y + "px";
  }
  function untip() { if (tipEl) tipEl.style.display = "none"; }
  // Event attributes for `s()`/`h()`: the tooltip shows text() on enter; also(ev) runs on enter too.
  function tipped(text, also) {
    return { onmouseenter: function (ev) { if (also) also(ev); tip(ev, text()); }, onmousemove: function (ev) { tip(ev); },
             onmouseleave: untip };
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
  // Layers from the input (bottom) to the logits (top). A layer's heads sit in one row, one column per
  // head index; a grouped-query model's heads are grouped by the key/value head they share (a gap between
  // groups and a box around each; grouped k/v nodes, with --kv-edges grouped, in a row just below); its
  // MLP sits in a column of its own to the right, half a row above the heads (it reads the residual after
  // them). Edges that would pass over a node are routed up a lane between the columns (see routePath).
  // Rows get closer for deep models (down to 64 px), so a 12-layer model fits a window's height.
  var NODE_R = 11;
  function modelName(name) {  // a local path shows its last part (the page title and heading); hub ids stay
    name = String(name || "");
    return /^(\/|\.{1,2}\/|~)/.test(name) ? name.replace(/\/+$/, "").split("/").pop() : name;
  }
  function layout(nodes, model) {
    var nHeads = 1, nKv = 0, nLayers = 0;
    nodes.forEach(function (n) {
      if (n.kind === "attention") nHeads = Math.max(nHeads, n.head + 1);
      if (n.kind === "kv_head") nKv = Math.max(nKv, n.head + 1);
      if (n.layer !== null && n.layer !== undefined && n.kind !== "logits") nLayers = Math.max(nLayers, n.layer + 1);
    });
    var groups = nKv || (model && model.n_kv_heads && model.n_kv_heads < nHeads && nHeads % model.n_kv_heads === 0 ? model.n_kv_heads : 1);
    var group = nHeads / groups;
    var ROW_H = nLayers <= 4 ? 96 : Math.max(64, Math.min(96, 840 / (nLayers + 1)));
    var colW = Math.max(50, Math.min(96, 860 / (nHeads + 2))), gap = groups > 1 ? Math.round(colW * 0.45) : 0;
    var left = 64;
    var headX = function (h) { return left + (h + 0.5) * colW + Math.floor(h / group) * gap; };
    var headsRight = left + nHeads * colW + (groups - 1) * gap;
    var mlpX = headsRight + colW * 0.9, width = mlpX + 150;
    var top = 44, height = top + (nLayers + 1) * ROW_H + 40, bottom = height - 34;
    var lanes = [headX(0) - colW / 2];
    for (var k = 1; k < nHeads; k++) lanes.push((headX(k - 1) + headX(k)) / 2);
    lanes.push(headX(nHeads - 1) + colW / 2, mlpX + colW * 0.55);
    var rows = [], byKey = {}, pos = {}, boxes = [];
    function row(key, y, title) {
      if (!byKey[key]) { byKey[key] = { key: key, y: y, title: title, items: [] }; rows.push(byKey[key]); }
      return byKey[key];
    }
    function layerY(L) { return bottom - (L + 1) * ROW_H + ROW_H * 0.25; }
    var centre = (left + headsRight) / 2;
    nodes.forEach(function (n) {
      var L = n.layer, x, r;
      if (n.kind === "input") { r = row("input", bottom, "input"); x = centre; }
      else if (n.kind === "logits") { r = row("logits", top, "logits"); x = centre; }
      else if (n.kind === "attention") { r = row("a" + L, layerY(L), "L" + L + " attn"); x = headX(n.head); }
      else if (n.kind === "kv_head") { r = row("kv" + L, layerY(L) + 30, "L" + L + " kv"); x = headX((n.head + 0.5) * group - 0.5); }
      else { r = row("m" + L, layerY(L) - ROW_H / 2, "L" + L + " mlp"); x = mlpX; }
      r.items.push(n);
      pos[n.id] = { x: x, y: r.y, node: n, wide: n.kind === "input" || n.kind === "logits" };
    });
    if (groups > 1) {
      rows.forEach(function (r) {
        if (r.key.charAt(0) !== "a") return;
        for (var g = 0; g < groups; g++) {
          var x0 = headX(g * group) - colW / 2 + 4, x1 = headX((g + 1) * group - 1) + colW / 2 - 4;
          boxes.push({ x: x0, y: r.y - NODE_R - 8, width: x1 - x0, height: 2 * NODE_R + 16 + (byKey["kv" + r.key.slice(1)] ? 30 : 0),
                       group: g, layer: +r.key.slice(1) });
        }
      });
    }
    rows.sort(function (a, b) { return b.y - a.y; });
    return { pos: pos, rows: rows, width: width, height: height, colW: colW, lanes: lanes, mlpX: mlpX, boxes: boxes,
             groups: groups, group: group, rowH: ROW_H, layerY: layerY, top: top, bottom: bottom };
  }
  function drawBoxes(g, lay) {  // grouped-query heads: a box per key/value group and layer
    lay.boxes.forEach(function (b) {
      append(g, s("rect", { class: "kv-group", x: b.x, y: b.y, width: b.width, height: b.height, rx: 8,
        "data-group": b.group, "data-layer": b.layer }),
        s("text", { class: "kv-group-label", x: b.x + 5, y: b.y + 9, text: "kv" + b.group }));
    });
  }
  // The SVG fills the card's width and the window's height below its top: the whole graph is visible on
  // load (never scaled above its natural size); zoom and pan from there. Again on every window resize.
  function fitToWindow(svg, lay) {
    function fit() {
      var top = svg.getBoundingClientRect().top, avail = window.innerHeight - Math.max(0, top) - 40;
      svg.style.height = Math.round(Math.max(320, Math.min(avail, lay.height))) + "px";
    }
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    svg.style.width = "100%";
    fit();
    window.addEventListener("resize", fit);
  }

  var SLOT_DX = { q: -6, k: 0, v: 6 };
  function halfWidth(p) { return p.wide ? 34 : NODE_R + 1; }
  // Which rows strictly between a (lower) and b (higher) have a node within the x-range the edge sweeps.
  function blocked(lay, a, b) {
    var x0 = Math.min(a.x, b.x) - NODE_R - 6, x1 = Math.max(a.x, b.x) + NODE_R + 6;
    return lay.rows.some(function (r) {
      if (!(r.y < a.y - 1 && r.y > b.y + 1)) return false;
      return r.items.some(function (n) {
        var p = lay.pos[n.id], w = halfWidth(p);
        return p.x + w >= x0 && p.x - w <= x1;
      });
    });
  }
  function hashOf(text) { var v = 0; for (var i = 0; i < text.length; i++) v = (v * 31 + text.charCodeAt(i)) | 0; return Math.abs(v); }
  function routePath(lay, a, b, slot, name) {
    var x1 = a.x, y1 = a.y - (a.wide ? 11 : NODE_R), x2 = b.x + (SLOT_DX[slot] || 0), y2 = b.y + (b.wide ? 11 : NODE_R);
    if (!lay.lanes || !blocked(lay, a, b)) {
      var dy = Math.max(18, (y1 - y2) * 0.45);
      return "M" + x1 + "," + y1 + " C" + x1 + "," + (y1 - dy) + " " + x2 + "," + (y2 + dy) + " " + x2 + "," + y2;
    }
    var mid = (a.x + b.x) / 2, lane = lay.lanes[0];
    lay.lanes.forEach(function (l) { if (Math.abs(l - mid) < Math.abs(lane - mid)) lane = l; });
    lane += ((hashOf(name || "") % 7) - 3) * 2.5;  // edges sharing a lane stay apart
    // Rise into the corridor halfway to the next row above the source, run along it to the lane, up the
    // lane to the corridor below the target's row, along it, and up into the target (rounded corners).
    var cu = corridor(lay, a.y, -1, y1 - 20), cd = corridor(lay, b.y, 1, y2 + 20);
    var r1 = Math.min(4, Math.abs(y1 - cu), Math.abs(lane - x1) / 2), r2 = Math.min(4, Math.abs(y2 - cd), Math.abs(x2 - lane) / 2);
    var s1 = lane >= x1 ? 1 : -1, s2 = x2 >= lane ? 1 : -1;
    return "M" + x1 + "," + y1 + " L" + x1 + "," + (cu + r1) + " Q" + x1 + "," + cu + " " + (x1 + s1 * r1) + "," + cu +
      " L" + (lane - s1 * r1) + "," + cu + " Q" + lane + "," + cu + " " + lane + "," + (cu - r1) +
      " L" + lane + "," + (cd + r2) + " Q" + lane + "," + cd + " " + (lane + s2 * r2) + "," + cd +
      " L" + (x2 - s2 * r2) + "," + cd + " Q" + x2 + "," + cd + " " + x2 + "," + (cd - r2) + " L" + x2 + "," + y2;
  }
  function corridor(lay, y, dir, fallback) {  // halfway from a row at y to the next row above (dir -1) or below (+1)
    var next = null;
    lay.rows.forEach(function (r) {
      if (dir < 0 ? r.y < y - 1 && (next === null || r.y > next) : r.y > y + 1 && (next === null || r.y < next)) next = r.y;
    });
    return next === null ? fallback : (y + next) / 2;
  }

  function shortName(n) {
    if (n.kind === "attention") return "h" + n.head;
    if (n.kind === "kv_head") return "kv" + n.head;
    if (n.kind === "mlp") return "m" + n.layer;
    return n.id;
  }
  // Role colours (light fill, dark stroke and text) and short names for the labels drawn on the graph.
  var ROLES = {
    previous_token: ["#deebf7", "#2166ac", "prev-token"], induction: ["#d9f0d3", "#1b7837", "induction"],
    duplicate_token: ["#e0f3f8", "#2c7fb8", "dup-token"], name_mover: ["#fde0c5", "#b35806", "name mover"],
    copy_suppression: ["#f2e0f0", "#8e3b8a", "copy-supp."], s_inhibition: ["#f6e8c3", "#8c510a", "S-inhib."],
    negative_name_mover: ["#fbe3d6", "#b2182b", "neg. name mover"],
    backup_name_mover: ["#fff0d9", "#d9822b", "backup name mover"],
    attention_sink: ["#eeeeee", "#555555", "sink"], positional: ["#f0f0d0", "#6b6b00", "self-attn"],
    other: ["#f4f1fb", "#5b3fa8", null]
  };
  function roleOf(label) {
    var tags = (label && label.role_tags) || [];
    var t = tags.filter(function (x) { return x !== "other"; })[0] || "other";
    return ROLES[t] ? t : "other";
  }
  function shortLabel(label, max) {
    var role = roleOf(label);
    if (ROLES[role][2]) return ROLES[role][2];
    var text = String(label.label || "");
    if (/^unclassified/i.test(text)) return "no role";
    if (/^silent/i.test(text)) return "silent";
    text = text.replace(/^MLP most active on /, "on ");
    return text.length > max ? text.slice(0, max - 1) + "\u2026" : text;
  }
  function drawNode(g, p, cls, onclick, label, handlers) {
    var n = p.node, gEl, role = label ? roleOf(label) : null;
    var col = role ? ROLES[role] : null;
    gEl = s("g", { class: cls + (label && label.status !== "ok" ? " unverified" : ""), "data-id": n.id,
      transform: "translate(" + p.x + "," + p.y + ")", onclick: onclick });
    var style = col && cls.indexOf("ghost") < 0 ? "fill:" + col[0] + ";stroke:" + col[1] : null;
    if (p.wide) append(gEl, s("rect", { x: -32, y: -11, width: 64, height: 22, rx: 6 }));
    else if (n.kind === "mlp") append(gEl, s("rect", { x: -13, y: -11, width: 26, height: 22, rx: 3, style: style }));
    else append(gEl, s("circle", { r: NODE_R, style: style }));
    append(gEl, s("text", { "text-anchor": "middle", dy: "3.5", text: shortName(n) }));
    if (label) {
      var beside = n.kind === "mlp";  // the MLP column has room to its right; heads get the label below
      append(gEl, s("text", { class: "node-label", "text-anchor": beside ? "start" : "middle",
        x: beside ? 17 : 0, y: beside ? 4 : NODE_R + 12, style: col ? "fill:" + col[1] : null,
        text: shortLabel(label, beside ? 22 : 11) + (label.status !== "ok" ? "?" : "") }));
    }
    var info = function () {
      return n.id + (label ? ": " + label.label + " (" + label.status + ")" : "") + (handlers && handlers.info ? "\n" + handlers.info() : "");
    };
    gEl.addEventListener("mouseenter", function (ev) { if (handlers && handlers.enter) handlers.enter(); tip(ev, info()); });
    gEl.addEventListener("mousemove", function (ev) { tip(ev); });
    gEl.addEventListener("mouseleave", function () { untip(); if (handlers && handlers.leave) handlers.leave(); });
    append(g, gEl);
    return gEl;
  }
  var positionNames = null;  // position-aware circuits with named template positions
  function posName(p) { return positionNames && positionNames[p] !== undefined ? p + " (" + positionNames[p] + ")" : "" + p; }

  // Zoom (wheel, around the pointer; the + and - buttons) and pan (drag the background) of an SVG
  // whose drawing is inside `view`; `fit` goes back to the whole graph.
  function zoomable(svg, view, onZoom) {
    var st = { k: 1, x: 0, y: 0 };
    function apply() {
      view.setAttribute("transform", "translate(" + st.x.toFixed(2) + "," + st.y.toFixed(2) + ") scale(" + st.k.toFixed(4) + ")");
      if (onZoom) onZoom(st.k);
    }
    function point(ev) {
      var m = svg.getScreenCTM(), pt = svg.createSVGPoint();
      pt.x = ev.clientX; pt.y = ev.clientY;
      return m ? pt.matrixTransform(m.inverse()) : { x: 0, y: 0 };
    }
    function zoomAt(f, px, py) {
      var k = Math.max(0.3, Math.min(12, st.k * f));
      st.x = px - (px - st.x) * (k / st.k); st.y = py - (py - st.y) * (k / st.k); st.k = k; apply();
    }
    svg.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var p = point(ev);
      zoomAt(Math.exp(-ev.deltaY * 0.0015), p.x, p.y);
    }, { passive: false });
    var drag = null;
    svg.addEventListener("mousedown", function (ev) {
      if (ev.button !== 0 || (ev.target.closest && ev.target.closest(".node, .ghost"))) return;
      var p = point(ev); drag = { x: p.x - st.x, y: p.y - st.y, moved: false };
    });
    window.addEventListener("mousemove", function (ev) {
      if (!drag) return;
      var p = point(ev); st.x = p.x - drag.x; st.y = p.y - drag.y; drag.moved = true; apply();
    });
    window.addEventListener("mouseup", function () { if (drag) { svg.dragged = drag.moved; drag = null; } });
    var vb = svg.viewBox.baseVal;
    return {
      zoom: function (f) { zoomAt(f, vb.x + vb.width / 2, vb.y + vb.height / 2); },
      fit: function () { st = { k: 1, x: 0, y: 0 }; apply(); },
      state: st
    };
  }
  function zoomControls(z) {
    return h("span", { class: "zoom" },
      h("button", { type: "button", id: "zoom-in", title: "zoom in (or the mouse wheel)", text: "+", onclick: function () { z.zoom(1.4); } }),
      h("button", { type: "button", id: "zoom-out", title: "zoom out", text: "\u2212", onclick: function () { z.zoom(1 / 1.4); } }),
      h("button", { type: "button", id: "zoom-fit", title: "the whole graph", text: "fit", onclick: function () { z.fit(); } }),
      h("span", { class: "muted", text: " wheel: zoom \u00b7 drag: pan" }));
  }
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
  var SCORER_NAMES = { evidence_agreement: "agreement", detection: "detection", llm: "LLM agreement", llm_detection: "LLM detection" };
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
        h("div", { class: "muted", id: "node-status", text: "confidence " + fmt(label.confidence, 2) + " \u00b7 status " + label.status +
          (label.provenance ? " \u00b7 " + label.provenance.backend : "") }),
        label.status_reason ? h("div", { class: "reason", id: "node-reason", text: "why not ok: " + label.status_reason }) : null);
      var scores = Object.keys(label.scores || {}).map(function (k) {
        var sc = label.scores[k];
        var ci = sc.ci_low !== null && sc.ci_low !== undefined ? " [" + fmt(sc.ci_low, 2) + "\u2013" + fmt(sc.ci_high, 2) + "]" : "";
        return [SCORER_NAMES[k] || k, (sc.metric === "roc_auc" ? "AUC " : "bal. acc. ") + fmt(sc.value, 2) + ci,
                fmt(sc.random_baseline, 2)];
      });
      if (scores.length) append(panel, h("h3", { text: "Label scores (held-out rows)" }),
        h("div", { id: "scores" }, table(["scorer", "score [95% CI]", "random label"], scores, [1, 2])),
        h("p", { class: "muted small", text: "agreement: the label's role predicts the head's strongest attention (or an MLP's activity). " +
          "detection: from the label alone, predict where on held-out prompts the component matters (its measured effect on the " +
          "metric); AUC against that effect. ok needs every score 0.10 above its random label, its interval above it too." }));
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
  function ticksLinear(lo, hi, n) {
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n || 1)));
    [1, 2, 2.5, 5, 10].some(function (m) { if ((hi - lo) / (step * m) <= n) { step *= m; return true; } return false; });
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.round(v / step) * step);
    return out;
  }
  var AXIS = { "font-size": 12, fill: "#3d4556" };
  function axes(svg, o) {  // o: {L, R, T, B, W, H, xticks: [[x, text]], yticks: [[y, text]], xtitle, ytitle, yticksRight, ytitleRight}
    append(svg, s("line", { class: "axis", x1: o.L, x2: o.W - o.R, y1: o.H - o.B, y2: o.H - o.B, stroke: "#5b6475" }),
      s("line", { class: "axis", x1: o.L, x2: o.L, y1: o.T, y2: o.H - o.B, stroke: "#5b6475" }));
    (o.xticks || []).forEach(function (t) {
      append(svg, s("line", { x1: t[0], x2: t[0], y1: o.H - o.B, y2: o.H - o.B + 4, stroke: "#5b6475" }),
        s("text", Object.assign({ class: "tick", x: t[0], y: o.H - o.B + 17, "text-anchor": "middle", text: t[1] }, AXIS)));
    });
    (o.yticks || []).forEach(function (t) {
      append(svg, s("line", { x1: o.L, x2: o.W - o.R, y1: t[0], y2: t[0], stroke: "#eceef2" }),
        s("text", Object.assign({ class: "tick", x: o.L - 6, y: t[0] + 4, "text-anchor": "end", text: t[1] }, AXIS)));
    });
    if (o.yticksRight) {
      append(svg, s("line", { class: "axis", x1: o.W - o.R, x2: o.W - o.R, y1: o.T, y2: o.H - o.B, stroke: "#5b6475" }));
      o.yticksRight.forEach(function (t) {
        append(svg, s("text", Object.assign({ class: "tick", x: o.W - o.R + 6, y: t[0] + 4, text: t[1] }, AXIS, { fill: o.rightColour || AXIS.fill })));
      });
    }
    if (o.xtitle) append(svg, s("text", Object.assign({ x: (o.L + o.W - o.R) / 2, y: o.H - 6, "text-anchor": "middle", text: o.xtitle }, AXIS)));
    if (o.ytitle) append(svg, s("text", Object.assign({ transform: "translate(14," + (o.T + o.H - o.B) / 2 + ") rotate(-90)", "text-anchor": "middle",
      text: o.ytitle }, AXIS, { fill: o.leftColour || AXIS.fill })));
    if (o.ytitleRight) append(svg, s("text", Object.assign({ transform: "translate(" + (o.W - 12) + "," + (o.T + o.H - o.B) / 2 + ") rotate(90)",
      "text-anchor": "middle", text: o.ytitleRight }, AXIS, { fill: o.rightColour || AXIS.fill })));
  }
  function curvePlot(metrics, totalEdges) {
    var W = 460, H = 290, L = 56, R = 14, T = 14, B = 46;
    var svg = s("svg", { class: "curve", viewBox: "0 0 " + W + " " + H, width: W, height: H, id: "curve" });
    var curves = [["curve_absolute", "top edges by |score|", "#5b3fa8", null], ["curve_signed", "top edges by signed score", "#e08b00", "5 3"]];
    var pts = [];
    curves.forEach(function (c) { (metrics[c[0]] || []).forEach(function (p) { if (p.faithfulness !== null) pts.push(p); }); });
    if (!pts.length) return h("p", { class: "muted", text: "No faithfulness curve stored (discover with the curve on)." });
    var fs = pts.map(function (p) { return p.faithfulness; });
    if (metrics.faithfulness !== null && metrics.faithfulness !== undefined) fs.push(metrics.faithfulness);
    var fmin = Math.min(0, Math.min.apply(null, fs)), fmax = Math.max(1, Math.max.apply(null, fs));
    var lx0 = Math.log10(0.1), lx1 = Math.log10(100);
    function X(pct) { return L + (Math.log10(Math.max(pct, 0.1)) - lx0) / (lx1 - lx0) * (W - L - R); }
    function Y(f) { return T + (fmax - f) / (fmax - fmin) * (H - T - B); }
    axes(svg, { L: L, R: R, T: T, B: B, W: W, H: H,
      xticks: [0.1, 1, 10, 100].map(function (p) { return [X(p), p + "%"]; }),
      yticks: ticksLinear(fmin, fmax, 5).map(function (v) { return [Y(v), fmt(v, v % 1 ? 2 : 0)]; }),
      xtitle: "edges kept (% of the graph, log scale)", ytitle: "faithfulness" });
    append(svg, s("line", { x1: L, x2: W - R, y1: Y(1), y2: Y(1), stroke: "#8a93a3", "stroke-dasharray": "3 3" }));
    curves.forEach(function (c, i) {
      var cp = (metrics[c[0]] || []).filter(function (p) { return p.faithfulness !== null; });
      if (!cp.length) return;
      append(svg, s("polyline", { fill: "none", stroke: c[2], "stroke-width": 2, "stroke-dasharray": c[3],
        points: cp.map(function (p) { return X(p.percent) + "," + Y(p.faithfulness); }).join(" ") }));
      append(svg, s("text", { x: L + 8, y: T + 14 + 15 * i, "font-size": 12, fill: c[2], text: (c[3] ? "- - " : "\u2014 ") + c[1] }));
    });
    var marker = s("g", { id: "curve-marker" });
    append(svg, marker);
    var cf = metrics.faithfulness, cn = metrics.n_edges;
    if (cf !== null && cf !== undefined && totalEdges) {
      append(svg, s("circle", Object.assign({ id: "curve-circuit", cx: X(100 * cn / totalEdges), cy: Y(cf), r: 5, fill: "#1a9850" },
        tipped(function () { return "the circuit: " + cn + " edges, faithfulness " + fmt(cf) + " (measured on the circuit itself)"; }))));
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
  function graphEdges(c) {  // edges of the whole graph (the page may embed fewer: viewer/render.py)
    return c.n_graph_edges || (c.positions && c.positions.n_edges) || c.edges.length;
  }
  function circuitSummary(c, root) {
    var m = c.metrics || {};
    append(root, h("h1", { text: modelName(c.model && c.model.name) + " \u00b7 " + (c.task && c.task.name), title: c.model && c.model.name }),
      h("div", { class: "summary", id: "summary" },
        h("span", null, "method ", h("b", { text: c.method.name })),
        h("span", null, "selection ", h("b", { text: c.selection.kind + (c.selection.value !== null ? " " + c.selection.value : "") })),
        h("span", null, "edges ", h("b", { text: m.n_edges + " of " + graphEdges(c) })),
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

  // Whether an edge carries the behaviour. Its score is the change of the metric when the edge alone is
  // switched to its corrupted value. For a higher-is-better metric (logit_diff, prob_diff) an edge the
  // behaviour runs through has a negative score; for a distance (kl, lower is better) a positive one.
  function higherIsBetter(c) {
    var p = (c.method && c.method.params) || {};
    if (p.higher_is_better !== undefined && p.higher_is_better !== null) return !!p.higher_is_better;
    return ((c.metrics && c.metrics.metric) || p.metric) !== "kl";
  }
  function carries(e, hib) {
    if (e.score === null || e.score === undefined || e.score === 0) return "none";
    return (hib ? e.score < 0 : e.score > 0) ? "carries" : "opposes";
  }
  function signLegend(c) {
    var hib = higherIsBetter(c), m = (c.metrics && c.metrics.metric) || "the metric";
    return h("div", { class: "legend", id: "legend" },
      h("span", null, h("span", { class: "swatch", style: "background:var(--carries)" }),
        "carries the behaviour: switching the edge off " + (hib ? "lowers " + m + " (score < 0)" : "raises " + m + " (score > 0)")),
      h("span", null, h("span", { class: "swatch", style: "background:var(--opposes)" }),
        "works against it: switching it off " + (hib ? "raises " + m + " (score > 0)" : "lowers " + m + " (score < 0)")),
      h("span", { text: "width \u221d \u221a|score| \u00b7 dashed: outside the circuit \u00b7 node colour: role \u00b7 dashed node, \u201c?\u201d: label unverified" }));
  }

  // The block an edge end belongs to, for the overview's aggregation by layer: the input, a layer (its
  // heads and its MLP together), the logits.
  function blockOf(n, nLayers) { return n.kind === "input" ? -1 : n.kind === "logits" ? nLayers : n.layer; }
  function blockName(b, nLayers) { return b < 0 ? "input" : b >= nLayers ? "logits" : "L" + b; }

  function renderCircuit(root, c) {
    positionNames = c.positions && c.positions.names ? c.positions.names : null;
    circuitSummary(c, root);
    var order = edgeOrder(c), labels = labelsOf(c), nIn = c.edges.filter(function (e) { return e.in_circuit; }).length;
    var max = Math.min(order.length, Math.max(nIn, MAX_SLIDER));
    var lay = layout(c.nodes, c.model), selected = null, hib = higherIsBetter(c), total = graphEdges(c);
    var nLayers = (c.model && c.model.n_layers) || 0;
    c.nodes.forEach(function (n) { if (n.layer !== null && n.layer !== undefined && n.kind !== "logits") nLayers = Math.max(nLayers, n.layer + 1); });
    var svg = s("svg", { class: "graph", id: "graph", viewBox: "0 0 " + lay.width + " " + lay.height });
    var view = s("g", { id: "viewport" }), gRows = s("g"), gEdges = s("g", { id: "edges" }), gNodes = s("g", { id: "nodes" });
    append(svg, view); append(view, gRows, gEdges, gNodes);
    var flow = h("div", { class: "card", id: "flow" });
    drawBoxes(gRows, lay);
    lay.rows.forEach(function (r) { append(gRows, s("text", { class: "row", x: 6, y: r.y + 3, text: r.title })); });
    var zoom = zoomable(svg, view, function (k) { svg.classList.toggle("zoomed", k >= DETAIL_ZOOM); });
    var panel = h("div", { class: "card", id: "panel" }, h("p", { class: "muted", text: "Hover a node to see its edges; click it to keep them and see its label and evidence." }));
    var hover = h("div", { class: "hover", id: "hover", text: "Hover an edge to see its slot and score." });
    var slider = h("input", { type: "range", id: "edge-slider", min: 0, max: max, value: nIn, step: 1 });
    var count = h("span", { id: "edge-count" }), mode = h("div", { class: "muted small", id: "overview-note" });
    var curve = curvePlot(c.metrics || {}, total), curveText = h("div", { class: "muted", id: "curve-text" });
    var shown = [], strength = {};

    function focus(id) {  // highlight a node's edges and neighbours, fade the rest; null: none (or the picked flow cell's)
      if (id === null && flowPick !== null) { pickFlow(); return; }
      svg.classList.toggle("focus", id !== null);
      var near = {};
      Array.prototype.forEach.call(gEdges.childNodes, function (p) {
        var on = id !== null && (p.getAttribute("data-source") === id || p.getAttribute("data-target") === id);
        p.classList.toggle("hl", on);
        if (on) { near[p.getAttribute("data-source")] = near[p.getAttribute("data-target")] = true; }
      });
      Array.prototype.forEach.call(gNodes.childNodes, function (g) { g.classList.toggle("near", !!near[g.getAttribute("data-id")] || g.getAttribute("data-id") === id); });
    }
    // The overview (more than DETAIL_MAX edges drawn, not zoomed in) draws the OVERVIEW_TOP strongest
    // edges one by one; the others are in the page but hidden until the graph is zoomed in to DETAIL_ZOOM,
    // a node is hovered or clicked (its own edges show) or a cell of the flow matrix is clicked.
    // The flow matrix (always): every drawn edge summed by layer, one cell per (source block, target
    // block) with the edge count and sum |score| (shade ~ sqrt of it; colour: the side with more |score|,
    // carries or opposes).
    var flowPick = null;
    function flowMatrix(list) {
      clear(flow);
      var agg = {}, keys = [], nb = nLayers + 2;
      list.forEach(function (e) {
        var a = lay.pos[e.source], b = lay.pos[e.target];
        if (!a || !b) return;
        var key = blockOf(a.node, nLayers) + ">" + blockOf(b.node, nLayers);
        if (!agg[key]) { agg[key] = { from: blockOf(a.node, nLayers), to: blockOf(b.node, nLayers), n: 0, sum: 0, carries: 0, drawn: 0 }; keys.push(key); }
        var g = agg[key], m = e.score === null || e.score === undefined ? 0 : Math.abs(e.score);
        g.n += 1; g.sum += m; if (carries(e, hib) === "carries") g.carries += m;
        if (!e.minor) g.drawn += 1;
      });
      var top = 0;
      keys.forEach(function (k) { top = Math.max(top, agg[k].sum); });
      nb -= 1;  // sources: the input and the layers; targets: the layers and the logits
      var cell = Math.max(12, Math.min(26, 300 / nb)), L = 44, T = 8, W = L + nb * cell + 8, H = T + nb * cell + 40;
      var svgF = s("svg", { class: "flow", id: "flow-matrix", viewBox: "0 0 " + W + " " + H, width: W, height: H });
      function X(b) { return L + (b + 1) * cell; }
      function Y(b) { return T + (nLayers - b) * cell; }  // targets: the logits at the top
      for (var bi = -1; bi < nLayers; bi++) {
        append(svgF, s("text", { class: "tick", x: L - 4, y: Y(bi + 1) + cell / 2 + 4, "text-anchor": "end", text: bi + 1 >= nLayers ? "out" : String(bi + 1) }),
          s("text", { class: "tick", x: X(bi) + cell / 2, y: T + nb * cell + 13, "text-anchor": "middle", text: bi < 0 ? "in" : String(bi) }));
      }
      append(svgF, s("text", { x: L + nb * cell / 2, y: H - 6, "text-anchor": "middle", class: "axis-title", text: "from layer" }),
        s("text", { transform: "translate(10," + (T + nb * cell / 2) + ") rotate(-90)", "text-anchor": "middle", class: "axis-title", text: "to layer" }));
      keys.forEach(function (k) {
        var g = agg[k], w = top ? Math.sqrt(g.sum / top) : 0, cls = g.carries >= g.sum - g.carries ? "carries" : "opposes";
        var text = blockName(g.from, nLayers) + " \u2192 " + blockName(g.to, nLayers) + ": " + g.n + " edge" + (g.n === 1 ? "" : "s") +
          " (" + g.drawn + " drawn one by one)\nsum |score| " + fmt(g.sum, 4) + ", " + Math.round(100 * (g.sum ? g.carries / g.sum : 0)) +
          "% of it carrying the behaviour\nclick: show these edges";
        var r = s("rect", Object.assign({ class: "cell " + cls + (flowPick === k ? " picked" : ""), x: X(g.from) + 1, y: Y(g.to) + 1,
          width: cell - 2, height: cell - 2, rx: 2, "fill-opacity": (0.12 + 0.88 * w).toFixed(3), "data-from": g.from, "data-to": g.to,
          "data-n": g.n, "data-sum": g.sum.toPrecision(6),
          onclick: function () { flowPick = flowPick === k ? null : k; pickFlow(); flowMatrix(list); } },
          tipped(function () { return text; })));
        append(svgF, r);
        if (cell >= 18) append(svgF, s("text", { class: "cell-n" + (w > 0.55 ? " dark" : ""), x: X(g.from) + cell / 2, y: Y(g.to) + cell / 2 + 3.5,
          "text-anchor": "middle", text: String(g.n) }));
      });
      append(flow, h("h3", { text: "Flow between layers" }), svgF,
        h("p", { class: "muted small", text: "Every drawn edge, summed by the layer it leaves and the layer it enters (in: the input, out: the logits); " +
          "the number is the edge count, the shade the sum of |score|. Click a cell to show its edges in the graph." }));
    }
    function pickFlow() {  // the picked cell's edges highlighted (shown even when the overview hides them)
      if (flowPick === null) { focus(selected); return; }
      var ft = flowPick.split(">"), near = {};
      svg.classList.add("focus");
      Array.prototype.forEach.call(gEdges.childNodes, function (p) {
        var a = lay.pos[p.getAttribute("data-source")], b = lay.pos[p.getAttribute("data-target")];
        var on = String(blockOf(a.node, nLayers)) === ft[0] && String(blockOf(b.node, nLayers)) === ft[1];
        p.classList.toggle("hl", on);
        if (on) near[a.node.id] = near[b.node.id] = true;
      });
      Array.prototype.forEach.call(gNodes.childNodes, function (g) { g.classList.toggle("near", !!near[g.getAttribute("data-id")]); });
    }
    function draw(k) {
      clear(gEdges); clear(gNodes); untip();
      shown = order.slice(0, k);
      var overview = shown.length > DETAIL_MAX, maxAbs = 0, touched = {};
      strength = {};
      shown.forEach(function (e, i) {
        e.minor = overview && i >= OVERVIEW_TOP;
        if (e.score !== null) maxAbs = Math.max(maxAbs, Math.abs(e.score));
        touched[e.source] = touched[e.target] = true;
        [e.source, e.target].forEach(function (id) {
          var st = strength[id] || (strength[id] = { n: 0, sum: 0 });
          st.n += 1; st.sum += e.score === null || e.score === undefined ? 0 : Math.abs(e.score);
        });
      });
      if (overview) {  // the overview's individual edges are the strongest by |score| among those drawn
        shown.slice().sort(function (a, b) { return Math.abs(b.score || 0) - Math.abs(a.score || 0); })
          .forEach(function (e, i) { e.minor = i >= OVERVIEW_TOP; });
      }
      svg.classList.toggle("overview", overview);
      shown.slice().reverse().forEach(function (e) {  // the strongest drawn last, on top
        var a = lay.pos[e.source], b = lay.pos[e.target];
        if (!a || !b) return;
        var w = e.score === null || !maxAbs ? 0.3 : Math.sqrt(Math.abs(e.score) / maxAbs); // sqrt: weak edges stay visible
        var text = edgeTitle(e, (e.in_circuit ? "in circuit" : "not in circuit") + ", " + carries(e, hib).replace("none", "no score"));
        append(gEdges, s("path", Object.assign({ class: "edge " + carries(e, hib) + (e.in_circuit ? "" : " outside") + (e.minor ? " minor" : ""),
          d: routePath(lay, a, b, e.slot, e.name),
          "stroke-width": (0.7 + (shown.length > 80 ? 2.6 : 4.5) * w).toFixed(2), "stroke-opacity": (0.3 + 0.6 * w).toFixed(2),
          "data-name": e.name, "data-slot": e.slot, "data-source": e.source, "data-target": e.target },
          tipped(function () { return text.replace(/ {2}\u00b7 {2}/g, "\n"); }, function () { hover.textContent = text; }))));
      });
      flowPick = null;
      flowMatrix(shown);
      Object.keys(lay.pos).forEach(function (id) {
        var p = lay.pos[id], on = !!touched[id];
        var cls = (on ? "node" : "ghost") + (labels[id] ? " labeled" : "") + (selected === id ? " selected" : "");
        drawNode(gNodes, p, cls, function (ev) { ev.stopPropagation(); select(id); }, labels[id],
          { enter: function () { focus(id); }, leave: function () { focus(selected); },
            info: function () { var st = strength[id]; return st ? st.n + " drawn edge" + (st.n === 1 ? "" : "s") + ", sum |score| " + fmt(st.sum, 4) : "no drawn edge"; } });
      });
      count.textContent = k + " edges shown (" + nIn + " in the circuit, " + total + " in the graph), " +
        Object.keys(touched).length + " nodes";
      mode.textContent = overview ? "Overview: the " + OVERVIEW_TOP + " strongest of the " + shown.length + " edges are drawn one by one; " +
        "all " + shown.length + " are summed by layer in the flow matrix (right; click a cell for its edges). Zoom in (wheel or +) " +
        "to draw every edge, or hover or click a node for its own." : "";
      var at = curve.mark ? curve.mark(k) : null, m = c.metrics || {};
      if (at && k === nIn && m.faithfulness !== null && m.faithfulness !== undefined) {
        curveText.textContent = "The circuit (" + k + " edges, " + fmt(at.pct, 2) + "% of the graph): faithfulness " + fmt(m.faithfulness) +
          " (green dot; measured on the circuit itself, as in the header). The stored curve keeps the top " + fmt(at.pct, 2) +
          "% of edges by |score| without this circuit's selection and pruning: " + fmt(at.f) + " there.";
      } else if (at) {
        curveText.textContent = k + " edges = " + fmt(at.pct, 2) + "% of the graph; the stored curve (top edges by |score|) there: faithfulness " +
          fmt(at.f) + " (interpolated between measured points). The circuit itself: " + fmt(m.faithfulness) + ".";
      }
      focus(selected);
    }
    function select(id) {
      selected = id;
      Array.prototype.forEach.call(gNodes.childNodes, function (g) { g.classList.toggle("selected", g.getAttribute("data-id") === id); });
      focus(id);
      if (id === null) return;
      nodePanel(panel, lay.pos[id].node, labels[id], shown.filter(function (e) { return e.source === id || e.target === id; }));
    }
    svg.addEventListener("click", function (ev) {
      if (svg.dragged) { svg.dragged = false; return; }
      if (!(ev.target.closest && ev.target.closest(".node, .ghost"))) select(null);
    });
    slider.addEventListener("input", function () { draw(parseInt(slider.value, 10)); });
    append(root,
      h("div", { class: "controls" }, h("label", { for: "edge-slider", text: "edges shown" }), slider, count, zoomControls(zoom)),
      signLegend(c),
      h("div", { class: "layout" },
        h("div", { class: "card graph-card" }, mode, svg, hover),
        h("div", null, panel, flow, h("div", { class: "card" }, h("h3", { text: "Faithfulness curve (stored)" }), curve, curveText))));
    draw(nIn);
    fitToWindow(svg, lay);
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
    var lay = layout(nodes, b.model || a.model);
    var svg = s("svg", { class: "graph", id: "graph", viewBox: "0 0 " + lay.width + " " + lay.height });
    var view = s("g", { id: "viewport" }), gEdges = s("g", { id: "edges" }), gNodes = s("g", { id: "nodes" });
    append(svg, view);
    drawBoxes(view, lay);
    lay.rows.forEach(function (r) { append(view, s("text", { class: "row", x: 6, y: r.y + 3, text: r.title })); });
    append(view, gEdges, gNodes);
    var zoom = zoomable(svg, view);
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
        append(gEdges, s("path", Object.assign({ class: "edge " + grp[0], d: routePath(lay, pa, pb, e.slot, name), "stroke-width": grp[0] === "kept" ? 1.5 : 2.5,
          "data-name": name, "data-slot": e.slot }, tipped(function () { return text.replace(/ {2}\u00b7 {2}/g, "\n"); },
          function () { hover.textContent = text; }))));
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
      }, lb[id] || la[id]);
    });
    append(root, h("div", { class: "controls" }, zoomControls(zoom)), legend([["var(--gained)", "gained (in " + names[1] + " only)"], ["var(--lost)", "lost (in " + names[0] + " only)"],
                         ["var(--kept)", "kept (in both)"]]),
      h("div", { class: "layout" }, h("div", { class: "card graph-card" }, svg, hover), panel));
    fitToWindow(svg, lay);
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
    var W = 700, H = 300, L = 62, R = 62, T = 16, B = 52;
    var xs = points.map(function (p, i) { return p.step !== null && p.step !== undefined ? p.step : i; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var ne = points.map(function (p) { return p.n_edges; }), emax = Math.max(1, Math.max.apply(null, ne));
    var eTicks = ticksLinear(0, emax, 5), etop = eTicks[eTicks.length - 1] < emax ? emax : eTicks[eTicks.length - 1];
    var fv = points.map(function (p) { return p.faithfulness; }).filter(function (v) { return v !== null && v !== undefined; });
    var flo = Math.min(0, Math.min.apply(null, fv.concat([0]))), fhi = Math.max(1, Math.max.apply(null, fv.concat([1])));
    function X(x) { return x1 === x0 ? (L + W - R) / 2 : L + (x - x0) / (x1 - x0) * (W - L - R); }
    function YE(v) { return T + (1 - v / etop) * (H - T - B); }
    function YF(v) { return T + (fhi - v) / (fhi - flo) * (H - T - B); }
    var svg = s("svg", { class: "curve", id: "timeline", viewBox: "0 0 " + W + " " + H, width: W, height: H });
    var stepped = points.every(function (p) { return p.step !== null && p.step !== undefined; });
    var xt = points.length <= 8 ? points.map(function (p, i) { return [X(xs[i]), stepped ? String(xs[i]) : pointName(p, i)]; })
      : ticksLinear(x0, x1, 6).map(function (v) { return [X(v), String(v)]; });
    axes(svg, { L: L, R: R, T: T, B: B, W: W, H: H, xticks: xt,
      yticks: eTicks.map(function (v) { return [YE(v), String(v)]; }), ytitle: "edges in the circuit", leftColour: "#2166ac",
      yticksRight: ticksLinear(flo, fhi, 5).map(function (v) { return [YF(v), fmt(v, v % 1 ? 2 : 0)]; }),
      ytitleRight: "faithfulness", rightColour: "#b06d00",
      xtitle: stepped ? "training step" : "checkpoint (in training order)" });
    append(svg, s("polyline", { fill: "none", stroke: "#2166ac", "stroke-width": 2, points: points.map(function (p, i) { return X(xs[i]) + "," + YE(p.n_edges); }).join(" ") }),
      s("polyline", { fill: "none", stroke: "#e08b00", "stroke-width": 2, "stroke-dasharray": "5 3",
        points: points.filter(function (p) { return p.faithfulness !== null; }).map(function (p) { return X(xs[points.indexOf(p)]) + "," + YF(p.faithfulness); }).join(" ") }));
    function flags(p) { return (p.warnings || []).map(function (w) { return w.split(":")[0]; }); }
    points.forEach(function (p, i) {
      var warn = flags(p).join("; ");
      append(svg, s("circle", Object.assign({ class: "point", cx: X(xs[i]), cy: YE(p.n_edges), r: 4, fill: "#2166ac" },
        tipped(function () { return pointName(p, i) + ": " + p.n_edges + " edges, faithfulness " + fmt(p.faithfulness) + (warn ? " (warning: " + warn + ")" : ""); }))));
      if (p.faithfulness !== null && p.faithfulness !== undefined) {
        if (warn) {  // a warning: this faithfulness measures little; drawn hollow in red and named
          append(svg, s("rect", { class: "fpoint flagged", x: X(xs[i]) - 5, y: YF(p.faithfulness) - 5, width: 10, height: 10, fill: "#fff", stroke: "#c0142c", "stroke-width": 2 },
            s("title", { text: (p.warnings || []).join("\n") })),
            s("text", { class: "flag", x: X(xs[i]), y: YF(p.faithfulness) + 17, "text-anchor": "middle", fill: "#c0142c", "font-size": 10, text: warn }));
        } else append(svg, s("rect", { class: "fpoint", x: X(xs[i]) - 3.5, y: YF(p.faithfulness) - 3.5, width: 7, height: 7, fill: "#e08b00" }));
      }
    });
    var legendItems = [["#2166ac", "edges in the circuit (left axis)"], ["#e08b00", "faithfulness (right axis, dashed)"]];
    if (points.some(function (p) { return flags(p).length; })) legendItems.push(["#c0142c", "warning: the faithfulness there means little"]);
    append(root, legend(legendItems), h("div", { class: "card" }, svg));
    var rows = points.map(function (p, i) {
      var link = null;
      if (server && p.circuit_id) {
        link = h("span", null, h("a", { href: "/ui/circuits/" + encodeURIComponent(p.circuit_id), text: "view" }),
          i > 0 && points[i - 1].circuit_id ? [" \u00b7 ", h("a", { href: "/ui/diff/" + encodeURIComponent(points[i - 1].circuit_id) + "/" +
            encodeURIComponent(p.circuit_id), text: "diff" })] : null);
      }
      var roles = Object.keys(p.roles || {}).map(function (t) { return t + ": " + p.roles[t].join(" "); }).join("; ");
      return [pointName(p, i), p.step === null || p.step === undefined ? "" : String(p.step), String(p.n_edges), String(p.n_nodes),
        fmt(p.faithfulness), fmt(p.behaviour), h("span", { class: "warning", title: (p.warnings || []).join("\n"), text: flags(p).join("; ") }),
        h("span", { class: "entered", text: (p.entered || []).join(" ") }),
        h("span", { class: "left", text: (p.left || []).join(" ") }), roles, link];
    });
    append(root, h("h2", { text: "Checkpoints" }), h("div", { class: "card" }, table(
      ["revision", "step", "edges", "nodes", "faithfulness", "behaviour (signed)", "warnings", "entered", "left", "roles", ""], rows, [1, 2, 3, 4, 5])));
  }

  // ------------------------------------------------------------------ job pages (server only)
  function progressBar(p) {
    return h("div", { class: "bar" }, h("div", { style: "width:" + Math.round(100 * (p || 0)) + "%" }));
  }
  function statusSpan(st) { return h("span", { class: "status-" + st, text: st }); }

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
      } else if (window.circuitryPages && window.circuitryPages[cfg.mode]) {  // the job pages (jobs.js, served only)
        window.circuitryPages[cfg.mode](root, cfg, { h: h, s: s, append: append, clear: clear, fmt: fmt, table: table,
          api: api, token: token, showError: showError, statusSpan: statusSpan, progressBar: progressBar });
      } else if (cfg.mode === "circuits") renderCircuitList(root);
      else renderIndex(root);
    } catch (e) {
      showError(root, e);
      throw e;
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
