/* circuitry /ui job pages: the job list, one job (live status, events, and once it has succeeded the
 * circuit's summary: edges, faithfulness, warnings, labels, and a link to the viewer), and the submit
 * form. Served pages only (they call the /v1 API); viewer.js draws everything else and calls these
 * with its helpers: window.circuitryPages.NAME(root, cfg, lib).
 *
 * The form is built from the job model's fields (service/ui_form.py: every option of POST /v1/jobs, in
 * cfg.fields); a task is a built-in task or a JSONL file read here, one row per line, and sent as the
 * job's inline rows, which the API checks as it checks any submission (a problem is shown as the API
 * words it, naming the row and the field). */
(function () {
  "use strict";

  var TERMINAL = ["succeeded", "failed", "cancelled"];
  // the fields shown at once; every other field of the job model is under "More options"
  var BASIC = ["model", "revision", "task", "n", "seed", "task_name", "method", "metric", "intervention", "steps",
               "target", "top_n", "tau", "curve", "labeling"];

  function renderJobs(root, cfg, L) {
    var h = L.h, append = L.append, clear = L.clear;
    append(root, h("h1", { text: "Jobs" }), h("p", null, h("a", { href: "/ui/jobs/new", text: "Submit a job" })));
    var box = h("div", { class: "card", id: "jobs" }, h("p", { class: "muted", text: "loading\u2026" }));
    append(root, box);
    function load() {
      L.api("/v1/jobs?limit=50").then(function (page) {
        clear(box);
        if (!page.items.length) { append(box, h("p", { class: "muted", text: "No jobs yet." })); return; }
        append(box, L.table(["job", "status", "model", "task", "method", "progress", "message", "created", "circuit"],
          page.items.map(function (j) {
            return [h("a", { href: "/ui/jobs/" + encodeURIComponent(j.id), text: j.id.slice(0, 8) }), L.statusSpan(j.status), j.model, j.task,
              j.method, L.progressBar(j.progress), j.error || j.message || "", j.created_at.replace("T", " ").slice(0, 19),
              j.circuit_id ? h("a", { href: "/ui/circuits/" + encodeURIComponent(j.circuit_id), text: "view" }) : ""];
          })));
      }).catch(function (e) { clear(box); L.showError(box, e); });
    }
    load();
    setInterval(load, 2000);
  }

  // ------------------------------------------------------------------ one job
  function circuitSummary(box, c, L) {  // what a finished job found, from its stored circuit
    var h = L.h, append = L.append, fmt = L.fmt, m = c.metrics || {}, sel = c.selection || {};
    var total = c.positions && c.positions.n_edges ? c.positions.n_edges : c.edges.length;
    append(box, h("h2", { text: "Result" }), h("div", { class: "summary", id: "job-summary" },
      h("span", null, "edges kept ", h("b", { id: "sum-edges", text: m.n_edges + " of " + total })),
      h("span", null, "nodes ", h("b", { id: "sum-nodes", text: String(m.n_nodes) })),
      h("span", null, "faithfulness ", h("b", { id: "sum-faithfulness", text: fmt(m.faithfulness) }), " (" + m.metric + ")"),
      h("span", null, "method ", h("b", { text: c.method.name })),
      h("span", null, "selection ", h("b", { text: sel.kind + (sel.value !== null && sel.value !== undefined ? " " + sel.value : "") })),
      c.wall_time_s ? h("span", null, "took ", h("b", { text: fmt(c.wall_time_s, 1) + " s" })) : null));
    (c.warnings || []).forEach(function (w) { append(box, h("p", { class: "warning job-warning", text: "warning: " + w })); });
    append(box, h("p", null, h("a", { href: "/ui/circuits/" + encodeURIComponent(c.__id), id: "circuit-link", class: "button", text: "Open the circuit in the viewer" })));
    var labels = c.labels || [];
    if (labels.length) {
      append(box, h("h3", { text: "Labels" }), h("div", { id: "job-labels" }, L.table(["component", "label", "role tags", "status"],
        labels.map(function (r) {
          return [r.component, r.label, (r.role_tags || []).join(", "), h("span", { class: r.status === "ok" ? "status-succeeded" : "muted", text: r.status })];
        }))));
    } else append(box, h("p", { class: "muted", id: "job-labels", text: "No labels (labeling backend: none)." }));
  }

  function renderJob(root, cfg, L) {
    var h = L.h, append = L.append, clear = L.clear, id = cfg.id;
    append(root, h("h1", { text: "Job " + id }));
    var head = h("div", { class: "summary", id: "job-status" }), bar = h("div"), events = h("pre", { class: "events", id: "events" });
    var result = h("div", { id: "job-result" }), summary = h("div", { id: "job-circuit" }), request = h("div");
    append(root, h("div", { class: "card" }, head, bar, result, summary), request, h("h2", { text: "Events" }), events);
    var done = false, summarised = null;
    function show(j) {
      clear(head); clear(bar); clear(result);
      append(head, h("span", null, "status ", L.statusSpan(j.status)), h("span", null, "attempt " + j.attempt + "/" + j.max_attempts),
        h("span", null, j.model + " \u00b7 " + j.task + " \u00b7 " + j.method), h("span", { class: "muted", text: j.message || "" }));
      append(bar, L.progressBar(j.status === "succeeded" ? 1 : j.progress));
      if (j.error) append(result, h("p", { class: "error", text: j.error }));
      if (!request.firstChild && j.request)
        append(request, h("details", { class: "card" }, h("summary", { text: "Request (as submitted)" }),
          h("pre", { class: "events", id: "job-request", text: JSON.stringify(j.request, null, 1) })));
      if (j.circuit_id && summarised !== j.circuit_id) {
        summarised = j.circuit_id;
        L.api("/v1/circuits/" + encodeURIComponent(j.circuit_id)).then(function (c) {
          c.__id = j.circuit_id;
          clear(summary);
          circuitSummary(summary, c, L);
        }).catch(function (e) { summarised = null; L.showError(summary, e); });
      }
      done = TERMINAL.indexOf(j.status) >= 0;
    }
    function refresh() { return L.api("/v1/jobs/" + encodeURIComponent(id)).then(show); }
    function addEvent(e) { events.textContent += e.at.slice(11, 23) + "  " + e.kind + "  " + e.status + "  " + (e.progress === null ? "" : L.fmt(e.progress, 2)) + "  " + (e.message || "") + "\n"; }
    // Live events: EventSource cannot send the Authorization header, so read the server-sent event
    // stream through fetch; fall back to polling where streaming bodies are not available.
    function stream() {
      var headers = { Accept: "text/event-stream" };
      if (L.token()) headers.Authorization = "Bearer " + L.token();
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
    }).catch(function (e) { L.showError(root, e); });
  }

  // ------------------------------------------------------------------ the submit form
  function readRows(text) {  // a JSONL task file: one JSON object per non-empty line
    var rows = [];
    text.split(/\r?\n/).forEach(function (line, i) {
      if (!line.trim()) return;
      var row;
      try { row = JSON.parse(line); } catch (e) { throw new Error("line " + (i + 1) + " is not JSON: " + e.message); }
      if (row === null || typeof row !== "object" || Array.isArray(row)) throw new Error("line " + (i + 1) + " is not a JSON object");
      rows.push(row);
    });
    if (!rows.length) throw new Error("the file has no rows");
    return rows;
  }

  function control(f, L) {
    var h = L.h, attrs = { name: f.name, "data-path": f.path, title: f.description || null };
    function options(list, empty) {
      return (empty ? [h("option", { value: "", text: empty })] : []).concat(list.map(function (t) { return h("option", { value: t, text: t }); }));
    }
    if (f.kind === "enum") {
      var sel = h("select", attrs, options(f.options, f.default === null || f.default === undefined ? (f.name === "metric" ? "task default" : "default") : null));
      if (f.default !== null && f.default !== undefined) sel.value = f.default;
      return sel;
    }
    if (f.kind === "bool") return h("input", Object.assign(attrs, { type: "checkbox", checked: !!f.default }));
    if (f.kind === "tribool") return h("select", attrs, [h("option", { value: "", text: "default" }), h("option", { value: "true", text: "on" }), h("option", { value: "false", text: "off" })]);
    if (f.kind === "int" || f.kind === "float")
      return h("input", Object.assign(attrs, { type: "number", min: f.min, max: f.max, step: f.kind === "int" ? 1 : "any",
        value: f.path === "task.n" || f.path === "task.seed" ? f.default : "", placeholder: f.default === null || f.default === undefined ? "" : "default " + f.default }));
    return h("input", Object.assign(attrs, { type: "text", placeholder: f.kind === "floats" ? "a number" : f.kind === "strings" ? "comma-separated" : (f.default ? "default " + f.default : "") }));
  }

  function valueOf(f, el) {  // the value to send, or undefined to leave the field to its default
    if (el.disabled) return undefined;
    if (f.kind === "bool") return el.checked === !!f.default && f.path !== "method.curve" ? undefined : el.checked;
    var v = el.value.trim();
    if (v === "") return f.path === "method.metric" ? null : undefined;
    if (f.kind === "tribool") return v === "true";
    if (f.kind === "int" || f.kind === "float") return Number(v);
    if (f.kind === "floats") {
      var xs = v.split(",").map(function (x) { return Number(x.trim()); });
      return xs.length === 1 ? xs[0] : xs;
    }
    if (f.kind === "strings") return v.split(",").map(function (x) { return x.trim(); }).filter(function (x) { return x; });
    return v;
  }

  function put(body, path, value) {
    var keys = path.split("."), o = body;
    for (var i = 0; i < keys.length - 1; i++) o = o[keys[i]] = o[keys[i]] || {};
    o[keys[keys.length - 1]] = value;
  }

  function renderSubmit(root, cfg, L) {
    var h = L.h, append = L.append, clear = L.clear;
    append(root, h("h1", { text: "Submit a job" }));
    var presets = cfg.presets || {}, fields = cfg.fields || [], els = {}, rows = {}, byName = {};
    var hints = { top_n: "keep the N most important edges (a scoring method); auto selects by the target",
                  target: "empty: faithfulness within 0.1 of 1 (the default)",
                  model: "a shipped toy model (its own task is filled in) or a model directory the server allows" };
    fields.forEach(function (f) {
      byName[f.name] = f;
      els[f.name] = control(f, L);
      rows[f.name] = h("div", { id: "row-" + f.name, class: "field", "data-path": f.path },
        h("label", { text: f.name.replace(/_/g, " "), title: f.path }), els[f.name],
        h("span", { class: "muted small", text: " " + (hints[f.name] || f.description || "") }));
    });
    els.model.value = "toy:induction";
    els.model.setAttribute("list", "model-presets");
    els.model.required = true;
    if (els.labeling) els.labeling.value = "heuristic";
    // the task: a built-in task or a JSONL file
    var source = { builtin: h("input", { type: "radio", name: "task_source", value: "builtin", checked: true }),
                   file: h("input", { type: "radio", name: "task_source", value: "file" }) };
    var file = h("input", { type: "file", id: "task-file", name: "task_file", accept: ".jsonl,.json,.txt,application/json" });
    var fileNote = h("span", { class: "muted small", id: "task-file-note" }), fileRows = null;
    var fileRow = h("div", { id: "row-task_file", class: "field" }, h("label", { text: "task file (JSONL)" }), file, " ", fileNote);
    file.addEventListener("change", function () {
      fileRows = null;
      fileNote.className = "muted small";
      fileNote.textContent = "";
      var picked = file.files && file.files[0];
      if (!picked) return;
      source.file.checked = true; sourceChanged();
      els.task_name.value = picked.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.:-]/g, "_").slice(0, 128) || "file";
      picked.text().then(function (text) {
        try {
          fileRows = readRows(text);
          fileNote.textContent = fileRows.length + " rows read from " + picked.name;
        } catch (e) {
          fileNote.className = "error small";
          fileNote.textContent = picked.name + ": " + e.message;
        }
      });
    });
    function apply(name) {  // a shipped model: its task and the settings the demo uses
      var p = presets[name];
      if (!p) return;
      els.task.value = p.task; els.n.value = p.n; els.seed.value = p.seed; els.metric.value = p.metric; els.top_n.value = p.top_n;
    }
    function show(name, on) {
      if (!rows[name]) return;
      rows[name].hidden = !on;
      els[name].disabled = !on;  // a hidden field is neither checked by the browser nor sent
    }
    function sourceChanged() {
      var fromFile = source.file.checked;
      ["task", "n", "seed"].forEach(function (k) { show(k, !fromFile); });
      show("task_name", fromFile);
      fileRow.hidden = !fromFile;
    }
    function methodChanged() {  // each field where it applies to the chosen method
      var m = els.method.value;
      fields.forEach(function (f) { if (f.applies) show(f.name, f.applies.indexOf(m) >= 0); });
    }
    apply(els.model.value);
    els.model.addEventListener("change", function () { apply(els.model.value.trim()); });
    els.method.value = cfg.default_method || "auto";
    els.method.addEventListener("change", methodChanged);
    source.builtin.addEventListener("change", sourceChanged);
    source.file.addEventListener("change", sourceChanged);
    var msg = h("div", { id: "submit-result" });
    var basic = BASIC.filter(function (n) { return rows[n]; }).map(function (n) { return rows[n]; });
    var groups = {};
    fields.forEach(function (f) { if (BASIC.indexOf(f.name) < 0) (groups[f.group] = groups[f.group] || []).push(rows[f.name]); });
    var more = h("details", { id: "more-options" }, h("summary", { text: "More options (every option of the job)" }),
      Object.keys(groups).map(function (g) { return h("fieldset", null, h("legend", { text: g.replace(/_/g, " ") }), groups[g]); }));
    var taskChoice = h("div", { id: "row-task_source", class: "field" }, h("label", { text: "task from" }),
      h("span", null, source.builtin, " a built-in task ", source.file, " a JSONL file (one row per line, as for circuitry discover --task FILE)"));
    var form = h("form", { class: "job card", id: "job-form" },
      h("datalist", { id: "model-presets" }, Object.keys(presets).map(function (t) { return h("option", { value: t, text: t }); })),
      basic.slice(0, 2), taskChoice, basic.slice(2, 5), fileRow, basic.slice(5), more,
      h("p", null, h("button", { type: "submit", text: "Submit" })), msg);
    sourceChanged();
    methodChanged();
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      clear(msg);
      var body = { model: {}, task: {}, method: {}, selection: {}, labeling: {} };
      fields.forEach(function (f) {
        var v = valueOf(f, els[f.name]);
        if (v !== undefined) put(body, f.path, v);
      });
      if (source.file.checked) {
        if (!fileRows) { L.showError(msg, new Error(fileNote.textContent || "choose a JSONL task file")); return; }
        body.task = { rows: fileRows, name: els.task_name.value.trim() || "file" };
      } else delete body.task.name;
      if (!Object.keys(body.labeling).length) delete body.labeling;
      L.api("/v1/jobs", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } })
        .then(function (j) { location.href = "/ui/jobs/" + encodeURIComponent(j.id); })
        .catch(function (e) { L.showError(msg, e); });
    });
    append(root, form);
  }

  window.circuitryPages = { jobs: renderJobs, job: renderJob, submit: renderSubmit };
})();
