// tda viewer: the page served by `tda serve` and `tda view` at /. Plain modern JavaScript, no
// build step, no dependencies.
//
// Every text from the server (corpus passages, prompts, ids) is data: it only ever reaches the
// page through textContent / createTextNode / attribute values, never parsed as markup (no
// HTML-string sinks anywhere), and the page's Content-Security-Policy allows no inline script.
// The bearer token (when the server has one) is asked for in a password field, kept in this
// tab's sessionStorage and sent as an Authorization header; it is never put in a URL.
"use strict";

const TOKEN_KEY = "tda-token";
const LISTS = [["trackstar", "TrackStar"], ["bm25", "BM25"], ["fused", "Fused (RRF)"]];
const SEARCHED = { trackstar: ["trackstar"], bm25: ["bm25"], fused: ["fused"],
                   both: ["trackstar", "bm25", "fused"] };
const STOP = new Set(["the", "a", "an", "of", "in", "on", "at", "to", "is", "was", "and", "or",
  "by", "for", "as", "with", "from", "that", "this", "it", "its", "be", "are", "were"]);
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ DOM helpers
/** An element with attributes/properties and children (strings become text nodes). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function clear(node) { node.replaceChildren(); return node; }
function fmt(x, digits = 4) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
function signed(x) { return (x >= 0 ? "+" : "−") + Math.abs(x).toPrecision(3); }

// ------------------------------------------------------------------ API
let token = sessionStorage.getItem(TOKEN_KEY);

class HttpError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON */ }
  if (resp.status === 401) { askToken("The token was refused: enter it again."); }
  if (!resp.ok) {
    const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail
      : JSON.stringify(data.detail)) : resp.statusText;
    throw new HttpError(resp.status, detail);
  }
  return data;
}

// ------------------------------------------------------------------ token
function askToken(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ["search-view", "reports-view"]) $(id).hidden = true;
  $("token-panel").hidden = false;
  $("token-error").textContent = message || "";
  $("token-input").value = "";
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token-input").value;
  $("token-input").value = "";
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-panel").hidden = true;
  start();
});

// ------------------------------------------------------------------ views
let config = null;

function showView(name) {
  $("search-view").hidden = name !== "search";
  $("reports-view").hidden = name !== "reports";
  $("tab-search").setAttribute("aria-pressed", String(name === "search"));
  $("tab-reports").setAttribute("aria-pressed", String(name === "reports"));
  if (name === "reports") loadRuns();
}
$("tab-search").addEventListener("click", () => showView("search"));
$("tab-reports").addEventListener("click", () => showView("reports"));

async function start() {
  $("load-error").hidden = true;
  try {
    const health = await api("/health");
    if (health.token_required && !token) { askToken(""); return; }
    config = await api("/config");
  } catch (e) {
    if (!(e instanceof HttpError && e.status === 401)) {
      $("load-error").textContent = `Could not reach the server: ${e.message}`;
      $("load-error").hidden = false;
    }
    return;
  }
  $("tab-search").hidden = !config.search;
  $("tab-reports").hidden = !config.reports;
  if (config.search) setupSearch();
  showView(config.search ? "search" : "reports");
  if (config.search) $("prompt").focus();
}

// ------------------------------------------------------------------ search
function setupSearch() {
  const mode = clear($("mode"));
  const modes = config.bm25 ? ["both", "trackstar", "bm25", "fused"] : ["trackstar"];
  for (const m of modes) mode.append(el("option", { value: m, text: m }));
  mode.value = config.default_mode || modes[0];
  const profile = $("profile");
  clear(profile).append(el("option", { value: "", text: "none (as indexed)" }));
  for (const p of config.profiles) profile.append(el("option", { value: p, text: p }));
  $("k").max = String(config.max_k);
}

$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("search-form").requestSubmit(); }
});

document.addEventListener("keydown", (ev) => {
  const typing = ev.target.closest && ev.target.closest("input, textarea, select, dialog");
  if (ev.key === "/" && !typing && !$("search-view").hidden) {
    ev.preventDefault();
    $("prompt").focus();
  }
});

$("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim()) { $("prompt").focus(); return; }
  const req = { prompt, k: Number($("k").value) || 10, mode: $("mode").value,
                explain: $("explain").checked };
  const target = $("target").value;
  if (target.trim()) req.target = target;
  if ($("profile").value) req.profile = $("profile").value;
  const status = clear($("search-status"));
  status.append("Searching…");
  $("search-button").disabled = true;
  try {
    const resp = await api("/search", req);
    renderResponse(resp);
  } catch (e) {
    clear(status).append(el("span", { class: "error", text: `Search failed: ${e.message}` }));
  } finally {
    $("search-button").disabled = false;
  }
});

/** The lower-cased words of a text (letters and digits), for highlighting. */
function words(text) {
  return (text.toLowerCase().match(/[\p{L}\p{N}]+/gu) || []).filter((w) => !STOP.has(w));
}

/** Text split into runs: [{text, kind: "t" (a target word) | "q" (a prompt word) | null}]. */
function highlightRuns(text, query) {
  const out = [];
  const re = /[\p{L}\p{N}]+/gu;
  let last = 0;
  for (const m of text.matchAll(re)) {
    const kind = query.target.has(m[0].toLowerCase()) ? "t"
      : query.prompt.has(m[0].toLowerCase()) ? "q" : null;
    if (!kind) continue;
    if (m.index > last) out.push({ text: text.slice(last, m.index), kind: null });
    out.push({ text: m[0], kind });
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push({ text: text.slice(last), kind: null });
  return out;
}

/** A block of ``text`` with the query's words marked (prompt: yellow, target: green). */
function highlighted(tag, cls, text, query) {
  const node = el(tag, { class: cls });
  for (const run of highlightRuns(text, query)) {
    node.append(run.kind ? el("mark", { class: run.kind, text: run.text,
      title: run.kind === "t" ? "target word" : "prompt word" }) : document.createTextNode(run.text));
  }
  return node;
}

function queryWords(prompt, target) {
  return { prompt: new Set(words(prompt)), target: new Set(words(target || "")) };
}

/** The heat map of one hit's salience: salience.text with each word's span coloured by its
 * value (warm: raises the score, cool: lowers it), scaled to the hit's largest |value|. */
function salienceView(sal, query) {
  const spans = sal.words.filter((w) => w.end > w.start).slice().sort((a, b) => a.start - b.start);
  const scale = Math.max(1e-30, ...spans.map((w) => Math.abs(w.value)));
  const node = el("p", { class: "hit-text salience",
    "aria-label": `Salience heat map, scale ±${scale.toPrecision(3)}` });
  let pos = 0;
  for (const w of spans) {
    if (w.start < pos) continue;                    // overlapping spans: keep the first
    if (w.start > pos) node.append(document.createTextNode(sal.text.slice(pos, w.start)));
    const word = sal.text.slice(w.start, w.end);
    const alpha = Math.min(1, Math.abs(w.value) / scale) * 0.85;
    const lw = word.toLowerCase().match(/[\p{L}\p{N}]+/gu) || [];
    const kind = lw.some((x) => query.target.has(x)) ? " t" : lw.some((x) => query.prompt.has(x)) ? " q" : "";
    const span = el("span", { class: `w ${w.value >= 0 ? "pos" : "neg"}${kind}`, text: word,
      title: `${word}: ${signed(w.value)}`, "data-value": String(w.value) });
    span.style.backgroundColor = w.value >= 0 ? `rgba(214, 96, 77, ${alpha.toFixed(3)})`
      : `rgba(67, 147, 195, ${alpha.toFixed(3)})`;
    node.append(span);
    pos = w.end;
  }
  if (pos < sal.text.length) node.append(document.createTextNode(sal.text.slice(pos)));
  const top = spans.slice().sort((a, b) => Math.abs(b.value) - Math.abs(a.value)).slice(0, 3);
  const note = el("p", { class: "salience-note" },
    `salience (${sal.method}) sums to ${fmt(sal.score)}; scale ±${scale.toPrecision(3)}; top: `,
    top.map((w) => `${sal.text.slice(w.start, w.end)} ${signed(w.value)}`).join(" · "));
  return [node, note];
}

let lastResponse = null;

function renderResponse(resp) {
  lastResponse = resp;
  const query = queryWords(resp.prompt, resp.target);
  const status = clear($("search-status"));
  status.append("Target ", el("q", { text: resp.target }), " ");
  if (resp.target_generated) {
    status.append(el("span", { class: "generated",
      text: "is the model's own greedy continuation (no target given): the lists attribute what the model said." }));
  } else {
    status.append("(given).");
  }
  status.append(` Mode ${resp.mode}, k ${resp.k}${resp.profile ? `, profile ${resp.profile}` : ""}.`);
  const total = Object.values(resp.timings_ms || {}).reduce((a, b) => a + b, 0);
  if (total) status.append(` ${total.toFixed(0)} ms.`);
  for (const w of resp.warnings || []) status.append(el("span", { class: "warning", text: ` ${w}` }));

  const results = clear($("results"));
  let anySalience = false;
  LISTS.forEach(([name, label], col) => {
    const hits = resp[name] || [];
    const list = el("ol", { class: "hits", "aria-label": `${label} hits` });
    hits.forEach((hit, row) => {
      const others = LISTS.filter(([n]) => n !== name).map(([n, l]) =>
        `${l.split(" ")[0]} ${hit.ranks[n] ? `#${hit.ranks[n]}` : "–"}`).join(" · ");
      const item = el("li", { class: "hit", tabindex: "-1", "data-col": String(col),
                              "data-row": String(row), "data-id": hit.id },
        el("div", { class: "hit-head" },
          el("span", { class: "rank", text: `#${hit.ranks[name] || row + 1}` }),
          el("span", { class: "score", text: `score ${fmt(hit.score)}` }),
          el("span", { class: "others", text: others, title: "rank in the other lists (– not in their top k)" })),
        el("div", { class: "hit-id", text: hit.id === hit.doc_id ? hit.id : `${hit.id} (document ${hit.doc_id})` }));
      if (hit.salience) {
        anySalience = true;
        item.append(...salienceView(hit.salience, query));
      } else {
        item.append(highlighted("p", "hit-text", hit.snippet, query));
      }
      item.append(el("button", { type: "button", class: "link open-doc", text: "Open document",
        "aria-label": `Open document ${hit.id}`, on: { click: () => openDocument(hit.id, item) } }));
      list.append(item);
    });
    const column = el("section", { class: "column", "aria-label": label, "data-list": name },
      el("h3", { text: `${label} (${hits.length})` }),
      hits.length ? list : el("p", { class: "empty", text: SEARCHED[resp.mode].includes(name)
        ? "No hits." : `Not searched in mode ${resp.mode}.` }));
    results.append(column);
  });
  $("legend").hidden = !anySalience;
  const first = results.querySelector(".hit");
  if (first) first.tabIndex = 0;
}

// Moving between hits: roving focus over the three columns.
function hitAt(col, row) {
  const hits = $("results").querySelectorAll(`.hit[data-col="${col}"]`);
  if (!hits.length) return null;
  return hits[Math.max(0, Math.min(row, hits.length - 1))];
}

function focusHit(hit) {
  if (!hit) return;
  for (const h of $("results").querySelectorAll(".hit")) h.tabIndex = -1;
  hit.tabIndex = 0;
  hit.focus();
}

$("results").addEventListener("keydown", (ev) => {
  const hit = ev.target.closest(".hit");
  if (!hit || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const col = Number(hit.dataset.col), row = Number(hit.dataset.row);
  const onHit = ev.target === hit;
  let next = null;
  switch (ev.key) {
    case "ArrowDown": case "j": next = hitAt(col, row + 1); break;
    case "ArrowUp": case "k": next = hitAt(col, row - 1); break;
    case "ArrowRight": case "l":
      for (let c = col + 1; c < LISTS.length && !next; c++) next = hitAt(c, row);
      break;
    case "ArrowLeft": case "h":
      for (let c = col - 1; c >= 0 && !next; c--) next = hitAt(c, row);
      break;
    case "Enter": case "o":
      if (!onHit) return;                       // the button handles its own Enter
      ev.preventDefault();
      openDocument(hit.dataset.id, hit);
      return;
    default: return;
  }
  ev.preventDefault();
  focusHit(next || hit);
});

// ------------------------------------------------------------------ documents
let returnFocus = null;

async function openDocument(id, from) {
  returnFocus = from || document.activeElement;
  const dialog = $("doc-dialog");
  $("doc-title").textContent = id;
  $("doc-meta").textContent = "Loading…";
  clear($("doc-text"));
  if (!dialog.open) dialog.showModal();
  $("doc-close").focus();
  try {
    const doc = await api(`/documents/${encodeURIComponent(id)}`);
    $("doc-meta").textContent = `document ${doc.doc_id} · ${doc.n_tokens} tokens · loss ${fmt(doc.loss, 2)} nats`;
    const query = lastResponse ? queryWords(lastResponse.prompt, lastResponse.target) : queryWords("", "");
    $("doc-text").replaceWith(Object.assign(highlighted("div", "doctext", doc.text, query), { id: "doc-text" }));
  } catch (e) {
    $("doc-meta").textContent = `Could not load it: ${e.message}`;
  }
}

// Closing puts the focus back on the hit at once (the dialog's "close" event comes a task
// later, when a key pressed meanwhile may have moved the focus on purpose).
function closeDocument() {
  const dialog = $("doc-dialog");
  if (dialog.open) dialog.close();
  const back = returnFocus;
  returnFocus = null;
  if (back && document.contains(back)) back.focus();
}
$("doc-close").addEventListener("click", closeDocument);
$("doc-dialog").addEventListener("cancel", (ev) => { ev.preventDefault(); closeDocument(); });
$("doc-dialog").addEventListener("close", () => { if (returnFocus) closeDocument(); });

// ------------------------------------------------------------------ reports
const reports = { runs: [], a: null, b: null, queriesA: [], queriesB: new Map(), selected: null };

async function loadRuns() {
  if (reports.runs.length) return;
  let list;
  try { list = await api("/reports"); } catch (e) {
    $("reports-dir").textContent = `Could not list the reports: ${e.message}`;
    return;
  }
  reports.runs = list.runs;
  $("reports-dir").textContent = list.directory ? `Directory: ${list.directory}` : "";
  const body = clear($("runs-table").tBodies[0]);
  for (const run of list.runs) {
    const m = run.metrics;
    body.append(el("tr", {},
      el("td", { text: run.id }), el("td", { text: run.method }), el("td", { text: run.file }),
      el("td", { class: "num", text: String(run.queries) }),
      el("td", { class: "num", text: m ? fmt(m.mrr, 3) : "–" }),
      el("td", { class: "num", text: m ? fmt(m.recall10, 3) : "–" }),
      el("td", { class: "num", text: m ? fmt(m.precision10, 3) : "–" })));
  }
  const a = clear($("run-a")), b = clear($("run-b"));
  b.append(el("option", { value: "", text: "(none)" }));
  for (const run of list.runs) {
    const label = `${run.id} (${run.queries} queries)`;
    a.append(el("option", { value: run.id, text: label }));
    b.append(el("option", { value: run.id, text: label }));
  }
  if (list.runs.length) await selectRuns();
}

function runById(id) { return reports.runs.find((r) => r.id === id) || null; }
function runPath(id) { return `/reports/${encodeURIComponent(id)}/queries`; }

async function selectRuns() {
  reports.a = runById($("run-a").value);
  reports.b = runById($("run-b").value);
  if (!reports.a) return;
  const qa = await api(runPath(reports.a.id));
  reports.queriesA = qa.queries;
  reports.queriesB = new Map();
  if (reports.b) {
    const qb = await api(runPath(reports.b.id));
    for (const q of qb.queries) reports.queriesB.set(q.example_id, q);
  }
  const rel = $("f-relation"), current = rel.value;
  clear(rel).append(el("option", { value: "", text: "all" }));
  for (const r of [...new Set(reports.queriesA.map((q) => q.relation).filter(Boolean))].sort()) {
    rel.append(el("option", { value: r, text: r }));
  }
  rel.value = [...rel.options].some((o) => o.value === current) ? current : "";
  renderQueries();
  if (reports.selected && reports.queriesA.some((q) => q.example_id === reports.selected)) {
    openQuery(reports.selected);
  } else {
    clear($("query-detail"));
  }
}
$("run-a").addEventListener("change", selectRuns);
$("run-b").addEventListener("change", selectRuns);
for (const id of ["f-relation", "f-correct", "f-knows"]) $(id).addEventListener("change", renderQueries);
$("f-text").addEventListener("input", renderQueries);
$("filter-form").addEventListener("submit", (ev) => ev.preventDefault());
$("run-form").addEventListener("submit", (ev) => ev.preventDefault());

function passes(q) {
  const rel = $("f-relation").value, cor = $("f-correct").value, knows = $("f-knows").value;
  const text = $("f-text").value.trim().toLowerCase();
  if (rel && q.relation !== rel) return false;
  if (cor === "top" && q.top_correct !== true) return false;
  if (cor === "some" && !(q.correct10 > 0)) return false;
  if (cor === "none" && q.correct10 !== 0) return false;
  if (knows === "yes" && q.model_knows !== true) return false;
  if (knows === "no" && q.model_knows !== false) return false;
  if (knows === "unknown" && q.model_knows !== null && q.model_knows !== undefined) return false;
  if (text && !`${q.example_id}\n${q.prompt}\n${q.target}`.toLowerCase().includes(text)) return false;
  return true;
}

function metricCell(a, b, key) {
  const va = a.metrics ? fmt(a.metrics[key], 2) : "–";
  if (!reports.b) return el("td", { class: "num", text: va });
  const qb = reports.queriesB.get(a.example_id);
  const vb = qb && qb.metrics ? fmt(qb.metrics[key], 2) : "–";
  return el("td", { class: "num", text: `${va} | ${vb}`, title: `${reports.a.id} | ${reports.b.id}` });
}

function mean(values) { return values.length ? values.reduce((x, y) => x + y, 0) / values.length : null; }

function renderQueries() {
  const shown = reports.queriesA.filter(passes);
  $("query-count").textContent = `${shown.length} of ${reports.queriesA.length} queries`
    + (reports.b ? `; metrics: ${reports.a.id} | ${reports.b.id}` : "");
  const body = clear($("query-table").tBodies[0]);
  for (const q of shown) {
    const tr = el("tr", { "data-id": q.example_id, class: q.example_id === reports.selected ? "selected" : "" },
      el("td", {}, el("button", { type: "button", class: "link", text: q.example_id,
        "aria-label": `Open query ${q.example_id}`, on: { click: () => openQuery(q.example_id) } })),
      el("td", { text: q.relation || "–" }),
      el("td", {}, q.prompt, el("strong", { text: q.target }),
        q.model_knows === true ? el("span", { class: "mark-ok", title: "the model knows it", text: " ✓" })
          : q.model_knows === false ? el("span", { class: "mark-bad", title: "the model does not know it", text: " ✗" }) : null),
      metricCell(q, null, "mrr"), metricCell(q, null, "recall10"), metricCell(q, null, "precision10"));
    body.append(tr);
  }
  const summary = clear($("compare-summary"));
  if (reports.b) {
    const pairs = shown.map((q) => [q, reports.queriesB.get(q.example_id)]).filter(([a, b]) => b && a.metrics && b.metrics);
    const line = ["mrr", "recall10", "precision10"].map((key) => {
      const ma = mean(pairs.map(([a]) => a.metrics[key])), mb = mean(pairs.map(([, b]) => b.metrics[key]));
      return `${key} ${fmt(ma, 3)} vs ${fmt(mb, 3)}`;
    }).join(", ");
    summary.append(`${reports.a.id} vs ${reports.b.id} on ${pairs.length} shared shown queries: ${line}.`);
  }
}

function passageList(rec, query, label) {
  const list = el("ol", { class: "passages", "aria-label": label });
  rec.proponents.forEach((p, i) => {
    const mark = p.correct === true ? el("span", { class: "mark-ok", text: "✓", "aria-label": "correct", title: "states the fact" })
      : p.correct === false ? el("span", { class: "mark-bad", text: "✗", "aria-label": "not correct", title: "does not state the fact" })
        : el("span", { class: "hint", text: "?", "aria-label": "correctness unknown" });
    list.append(el("li", { class: "passage" },
      el("div", { class: "hit-head" }, el("span", { class: "rank", text: `#${i + 1}` }), mark,
        el("span", { class: "score", text: `score ${fmt(p.score)}` }),
        el("span", { class: "hit-id", text: p.id })),
      highlighted("p", "passage-text", p.text, query)));
  });
  return list;
}

function recordColumn(rec, query) {
  const col = el("section", { class: "column", "aria-label": `${rec.run.id} proponents`, "data-run": rec.run.id },
    el("h3", { text: `${rec.run.id}: proponents` }));
  const m = rec.query.metrics;
  col.append(el("p", { class: "hint", text: m ? `MRR ${fmt(m.mrr, 3)} · recall@10 ${fmt(m.recall10, 1)} · precision@10 ${fmt(m.precision10, 2)}` : "no ground truth: not scored" }));
  col.append(passageList(rec, query, `${rec.run.id} proponents`));
  if (rec.opponents.length) {
    const opp = el("details", {}, el("summary", { text: `Opponents (${rec.opponents.length}, lowest score first)` }));
    opp.append(passageList({ proponents: rec.opponents }, query, `${rec.run.id} opponents`));
    col.append(opp);
  }
  return col;
}

async function openQuery(exampleId) {
  reports.selected = exampleId;
  for (const tr of $("query-table").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === exampleId);
  const detail = clear($("query-detail"));
  detail.append(el("p", { class: "hint", text: "Loading…" }));
  const path = (run) => `${runPath(run.id)}/${encodeURIComponent(exampleId)}`;
  let a, b = null;
  try {
    a = await api(path(reports.a));
    if (reports.b && reports.queriesB.has(exampleId)) b = await api(path(reports.b));
  } catch (e) {
    clear(detail).append(el("p", { class: "error", text: `Could not load the query: ${e.message}` }));
    return;
  }
  const q = a.query;
  const query = queryWords(q.prompt, q.target);
  const facts = el("dl", { class: "facts" });
  const fact = (k, v) => { if (v !== null && v !== undefined && v !== "") facts.append(el("dt", { text: k }), el("dd", { text: String(v) })); };
  fact("Query", q.example_id);
  fact("Relation", q.relation);
  fact("Fact", a.fact_id);
  fact("Prompt", q.prompt);
  fact("Target", q.target);
  fact("Model knows it", q.model_knows === null || q.model_knows === undefined ? null
    : q.model_knows ? "yes (the target is its greedy continuation)" : "no");
  fact("Model confidence", a.model_confidence === null ? null : fmt(a.model_confidence, 3));
  fact("Ground truth", a.ground_truth_ids ? a.ground_truth_ids.join(", ") : null);
  fact("Fact frequency", a.fact_frequency);
  const side = el("div", { class: "side" }, recordColumn(a, query));
  if (b) side.append(recordColumn(b, query));
  else if (reports.b) side.append(el("p", { class: "empty", text: `${reports.b.id} has no query ${exampleId}.` }));
  clear(detail).append(el("h3", { text: `Query ${exampleId}` }), facts, side);
}

start();
