// The doc2atom inspector: ask, see the atoms that fired, see each atom's source span.
// Plain DOM, no framework, no network beyond this server. Text from the server is only ever
// set with textContent (never innerHTML): documents are untrusted.
"use strict";

const $ = (id) => document.getElementById(id);
const docCache = new Map();

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const msg = body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`;
    throw new Error(msg);
  }
  return body;
}

function showError(err) {
  const box = $("error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function sourceLabel(atom) {
  const name = atom.source.path.split("#")[0].split("/").pop();
  const frag = atom.source.path.includes("#") ? "#" + atom.source.path.split("#")[1] : "";
  return `${name}${frag}:${atom.source.line ?? "?"}`;
}

function fmt(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function atomRow(atom, withScores) {
  const tr = document.createElement("tr");
  tr.dataset.atom = atom.id;
  cell(tr, atom.id, "mono");
  cell(tr, atom.type, "type type-" + atom.type);
  if (withScores) {
    const score = cell(tr, fmt(atom.score, 3), "num");
    const g = atom.signals;
    if (g) {  // the router's evidence, on hover: dense cosine, BM25, word cover, retrieval round
      score.title = `learned ${fmt(g.learned, 3)} · dense ${fmt(g.dense, 3)} · bm25 ${fmt(g.lexical, 2)}` +
        ` · cover ${fmt(g.cover, 2)} · round ${g.hop}`;
    }
    cell(tr, fmt(atom.weight, 2), "num");
  }
  cell(tr, atom.text);
  cell(tr, sourceLabel(atom), "mono");
  tr.addEventListener("click", () => showAtom(atom));
  return tr;
}

async function getDocument(id) {
  if (!docCache.has(id)) docCache.set(id, await api(`/v1/documents/${encodeURIComponent(id)}`));
  return docCache.get(id);
}

async function showAtom(atom) {
  try {
    const [doc, detail] = await Promise.all([getDocument(atom.source.doc),
                                             api(`/v1/atoms/${encodeURIComponent(atom.id)}`)]);
    document.querySelectorAll("tr.selected").forEach((tr) => tr.classList.remove("selected"));
    document.querySelectorAll(`tr[data-atom="${atom.id}"]`).forEach((tr) => tr.classList.add("selected"));
    $("doc-title").textContent = doc.title || doc.path;
    $("doc-path").textContent = `${doc.path} · ${doc.n_atoms} atoms`;
    $("detail-id").textContent = detail.id;
    $("detail-type").textContent = detail.type;
    $("detail-text").textContent = detail.text;
    $("detail-key").textContent = detail.key;
    $("detail-span").textContent = `characters ${detail.source.start}–${detail.source.end}, line ${detail.source.line}`;
    $("atom-detail").hidden = false;
    const pre = $("doc-text");
    pre.replaceChildren();
    const { start, end } = detail.source;
    const mark = document.createElement("mark");
    mark.className = "span";
    mark.id = "highlight";
    mark.dataset.atom = atom.id;
    mark.textContent = doc.text.slice(start, end);
    pre.append(doc.text.slice(0, start), mark, doc.text.slice(end));
    mark.scrollIntoView({ block: "center" });
    document.body.dataset.highlighted = atom.id;
  } catch (err) {
    showError(err);
  }
}

async function ask(event) {
  event.preventDefault();
  showError(null);
  const question = $("question").value.trim();
  if (!question) return;
  const body = { model: "doc2atom", mode: $("mode").value, messages: [{ role: "user", content: question }] };
  const k = parseInt($("top-k").value, 10);
  if (k > 0) body.top_k = k;
  document.body.dataset.state = "asking";
  $("ask").disabled = true;
  try {
    const res = await api("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    $("answer").textContent = res.choices[0].message.content;
    $("refused").hidden = !res.refused;
    const stray = res.unsupported || [];
    $("unsupported").textContent = stray.length ? `Not in the atoms that fired: ${stray.join(", ")}` : "";
    $("unsupported").hidden = stray.length === 0;
    const t = res.timings_ms || {};
    $("timing").textContent = t.total_ms !== undefined ? `${t.total_ms.toFixed(0)} ms` : "";
    const tbody = $("fired").tBodies[0];
    tbody.replaceChildren(...res.atoms.map((a) => atomRow(a, true)));
    $("fired").hidden = res.atoms.length === 0;
    $("no-atoms").hidden = res.atoms.length > 0;
    $("result").hidden = false;
    if (res.atoms.length) await showAtom(res.atoms[0]);
    document.body.dataset.state = "answered";
  } catch (err) {
    showError(err);
    document.body.dataset.state = "error";
  } finally {
    $("ask").disabled = false;
  }
}

async function browse() {
  const params = new URLSearchParams();
  if ($("doc-filter").value) params.set("doc", $("doc-filter").value);
  if ($("type-filter").value) params.set("type", $("type-filter").value);
  try {
    const res = await api(`/v1/atoms?${params}`);
    $("atom-list").tBodies[0].replaceChildren(...res.atoms.map((a) => atomRow(a, false)));
    $("atom-count").textContent = `${res.total} atom${res.total === 1 ? "" : "s"}` +
      (res.atoms.length < res.total ? ` (first ${res.atoms.length} shown)` : "");
  } catch (err) {
    showError(err);
  }
}

async function init() {
  try {
    const [health, docs, all] = await Promise.all([api("/healthz"), api("/v1/documents"), api("/v1/atoms")]);
    $("health").textContent = `${health.kb} · ${health.documents} documents · ${health.atoms} atoms` +
      (health.writes_enabled ? "" : " · read-only");
    for (const d of docs.documents) {
      const opt = document.createElement("option");
      opt.value = d.id;
      opt.textContent = `${d.title || d.path} (${d.n_atoms})`;
      $("doc-filter").appendChild(opt);
    }
    for (const t of [...new Set(all.atoms.map((a) => a.type))].sort()) {
      const opt = document.createElement("option");
      opt.value = t;
      opt.textContent = t;
      $("type-filter").appendChild(opt);
    }
    await browse();
    document.body.dataset.state = "ready";
  } catch (err) {
    showError(err);
    document.body.dataset.state = "error";
  }
}

$("ask-form").addEventListener("submit", ask);
$("doc-filter").addEventListener("change", browse);
$("type-filter").addEventListener("change", browse);
init();
