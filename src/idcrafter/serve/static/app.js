// idcrafter page: uploads references, posts one job per chosen model to /api/generate, polls
// /api/jobs/{id}, and shows the video, per-subject identity figures, contact sheet and downloads.
// Every refusal shown here is the server's own JSON `error` message. Running jobs are kept in
// sessionStorage, so a reload (or a dropped connection) picks them up again.
"use strict";

const state = { models: [], limits: {}, refs: [], examples: [], panels: [] };
const $ = (sel, root = document) => root.querySelector(sel);
const SETTINGS = [["steps", 1], ["cfg", 0.1], ["seed", 1], ["frames", 1], ["height", 1], ["width", 1]];
const SUBJECT_COLUMNS = [["face_sim", "face sim"], ["subject_sim", "subject sim"], ["leakage", "leakage"],
                         ["copy_paste", "copy-paste"]];
const CLIP_METRICS = ["face_sim_mean", "face_sim_min", "subject_sim", "leakage", "action_acc", "motion",
                      "quality", "natural", "copy_paste", "total"];

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    const error = new Error((body && body.error) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function chosenModels() {
  return [...document.querySelectorAll("#model-choice input:checked")].map(i => i.value);
}

function maxRefs() {
  const chosen = state.models.filter(m => chosenModels().includes(m.name));
  const list = chosen.length ? chosen : state.models;
  return list.length ? Math.min(...list.map(m => m.max_refs)) : 0;
}

function renderRefs() {
  const box = $("#previews");
  box.replaceChildren();
  state.refs.forEach((ref, i) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = ref.url;
    img.alt = `reference ${i}`;
    img.onerror = () => { img.alt = "no preview"; img.classList.add("broken"); };
    const cap = document.createElement("figcaption");
    cap.textContent = `${i}: ${ref.file.name}`;
    const rm = document.createElement("button");
    rm.type = "button"; rm.className = "remove secondary"; rm.textContent = "×";
    rm.title = "remove"; rm.onclick = () => { URL.revokeObjectURL(ref.url); state.refs.splice(i, 1); renderRefs(); };
    fig.append(img, cap, rm);
    box.append(fig);
  });
  const count = $("#ref-count");
  const k = maxRefs();
  count.textContent = `${state.refs.length} / ${k} (this model's maximum)`;
  count.classList.toggle("over", state.refs.length > k);
}

function setRefs(files) {
  state.refs.forEach(r => URL.revokeObjectURL(r.url));
  state.refs = files.map(file => ({ file, url: URL.createObjectURL(file) }));
  renderRefs();
}

function renderSettings() {
  const model = state.models.find(m => chosenModels().includes(m.name)) || state.models[0];
  if (!model) return;
  const box = $("#settings");
  const old = Object.fromEntries(SETTINGS.map(([k]) => [k, $(`#set-${k}`)?.value]));
  box.replaceChildren();
  for (const [key, step] of SETTINGS) {
    const r = model.settings[key];
    const label = document.createElement("label");
    label.htmlFor = `set-${key}`;
    label.textContent = `${key} (${r.lo}–${r.hi})`;
    const input = document.createElement("input");
    Object.assign(input, { type: "number", id: `set-${key}`, name: key, min: r.lo, max: r.hi, step,
                           value: old[key] ?? r.default });
    box.append(label, input);
  }
}

function renderModels() {
  const box = $("#model-choice");
  for (const m of state.models) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    Object.assign(input, { type: "checkbox", value: m.name, checked: true });
    input.onchange = () => { renderSettings(); renderRefs(); };
    label.append(input, ` ${m.name} `);
    const info = document.createElement("span");
    info.className = "muted";
    info.textContent = `(${m.kind}, ${m.device}, up to ${m.max_refs} subjects, scorer: ${m.scorer || "none"}) `;
    label.append(info);
    box.append(label, document.createElement("br"));
  }
  $("#models-info").textContent = `serving ${state.models.map(m => m.name).join(", ")}; ` +
    `uploads up to ${(state.limits.max_upload_bytes / 2 ** 20).toFixed(0)} MB and ` +
    `${(state.limits.max_pixels / 1e6).toFixed(1)} megapixels each (PNG, JPEG, WebP); ` +
    `results kept ${Math.round(state.limits.keep_seconds / 60)} min`;
  $("#prompt").maxLength = state.limits.max_prompt_chars;
}

function renderExamples() {
  const box = $("#examples");
  if (!state.examples.length) { box.textContent = "none (no SpriteWorld model is served)"; return; }
  for (const ex of state.examples) {
    const b = document.createElement("button");
    b.type = "button"; b.className = "example"; b.dataset.example = ex.id;
    for (const src of ex.refs) {
      const img = document.createElement("img"); img.src = src; img.alt = ""; b.append(img);
    }
    const cap = document.createElement("span"); cap.textContent = ex.caption; b.append(cap);
    b.onclick = () => loadExample(ex);
    box.append(b);
  }
}

async function loadExample(ex) {
  showError("");
  const files = await Promise.all(ex.refs.map(async (src, k) => {
    const blob = await (await fetch(src)).blob();
    return new File([blob], `example${ex.id}_ref${k}.png`, { type: "image/png" });
  }));
  setRefs(files);
  $("#prompt").value = ex.caption;
  await generate();
}

function formFor(model) {
  const form = new FormData();
  state.refs.forEach(r => form.append("refs", r.file, r.file.name));
  form.append("prompt", $("#prompt").value);
  form.append("model", model);
  for (const [key] of SETTINGS) {
    const v = $(`#set-${key}`)?.value;
    if (v !== undefined && v !== "") form.append(key, v);
  }
  return form;
}

async function generate() {
  showError("");
  const models = chosenModels();
  if (!models.length) { showError("choose at least one model"); return; }
  const button = $("#generate");
  button.disabled = true;
  clearPanels();
  const errors = [];
  const jobs = [];
  for (const model of models) {
    try {
      const res = await api("/api/generate", { method: "POST", body: formFor(model) });
      jobs.push({ id: res.job_id, model });
    } catch (err) {
      if (!errors.includes(err.message)) errors.push(err.message);
    }
  }
  button.disabled = false;
  if (errors.length) showError(errors.join("\n"));
  jobs.forEach(j => addPanel(j, jobs.length));
  saveJobs();
}

function clearPanels() {
  state.panels.forEach(p => { p.stopped = true; });
  state.panels = [];
  $("#results").replaceChildren();
}

function saveJobs() {
  sessionStorage.setItem("idcrafter-jobs", JSON.stringify(state.panels.map(p => ({ id: p.id, model: p.model }))));
}

function addPanel(job, columns) {
  const node = $("#panel-template").content.firstElementChild.cloneNode(true);
  node.dataset.job = job.id;
  node.dataset.model = job.model;
  $(".model-name", node).textContent = job.model;
  const panel = { ...job, node, refUrls: state.refs.map(r => URL.createObjectURL(r.file)), stopped: false };
  $(".cancel", node).onclick = async () => {
    try { await api(`/api/jobs/${job.id}`, { method: "DELETE" }); } catch (err) { showJobError(panel, err.message); }
  };
  state.panels.push(panel);
  const results = $("#results");
  results.style.setProperty("--cols", String(Math.max(1, columns)));
  results.append(node);
  poll(panel);
}

function showJobError(panel, message) {
  const box = $(".job-error", panel.node);
  box.textContent = message;
  box.hidden = false;
}

async function poll(panel) {
  while (!panel.stopped) {
    let job;
    try {
      job = await api(`/api/jobs/${panel.id}`);
    } catch (err) {
      showJobError(panel, err.message);
      if (err.status === 404 || err.status === 410) { panel.stopped = true; saveJobs(); return; }
      await new Promise(r => setTimeout(r, 1000));
      continue;
    }
    const where = job.status === "queued" && job.position ? ` (position ${job.position} in the queue)` : "";
    const stage = job.stage && job.stage !== job.status ? `: ${job.stage}` : "";
    $(".status", panel.node).textContent = `${job.status}${stage}${where} — ${Math.round(job.progress * 100)}%`;
    $("progress", panel.node).value = job.progress;
    if (job.status === "done" || job.status === "failed") {
      $(".cancel", panel.node).hidden = true;
      if (job.status === "failed") showJobError(panel, job.error);
      else showResult(panel, job);
      panel.node.dataset.status = job.status;
      return;
    }
    await new Promise(r => setTimeout(r, 250));
  }
}

function fmt(v) {
  return v === null || v === undefined ? "n/a" : typeof v === "number" ? v.toFixed(3) : String(v);
}

function cell(row, text, tag = "td") {
  const c = document.createElement(tag);
  c.textContent = text;
  row.append(c);
  return c;
}

function showResult(panel, job) {
  const node = panel.node;
  const video = $("video", node);
  video.src = job.files.video;
  $("img.sheet", node).src = job.files.sheet;
  const names = { video: "mp4", sheet: "png", metrics: "json" };
  for (const kind of Object.keys(names)) {
    const a = $(`.dl-${kind}`, node);
    a.href = job.files[kind];
    a.download = `idcrafter-${job.model}-${job.job_id.slice(0, 8)}-${kind}.${names[kind]}`;
  }
  const model = state.models.find(m => m.name === job.model);
  $(".scorer", node).textContent = model && model.scorer ? `(${model.scorer})` : "";
  const table = $("table.subjects", node);
  const cols = SUBJECT_COLUMNS.filter(([k]) => job.per_subject.some(s => k in s));
  const hasAction = job.per_subject.some(s => "action" in s);
  const head = document.createElement("tr");
  ["subject", ...cols.map(c => c[1]), ...(hasAction ? ["action (seen / asked)"] : [])].forEach(t => cell(head, t, "th"));
  $("thead", table).replaceChildren(head);
  const body = $("tbody", table);
  body.replaceChildren();
  job.per_subject.forEach(s => {
    const row = document.createElement("tr");
    row.className = "subject-row";
    const first = cell(row, ` ref ${s.reference}`);
    if (panel.refUrls[s.reference]) {
      const img = document.createElement("img");
      img.className = "thumb"; img.src = panel.refUrls[s.reference]; img.alt = "";
      first.prepend(img);
    }
    cols.forEach(([k]) => cell(row, fmt(s[k])));
    if (hasAction) cell(row, `${s.action ?? "none"} / ${s.wanted_action ?? "n/a"}`);
    body.append(row);
  });
  if (!job.per_subject.length) {
    const row = document.createElement("tr");
    cell(row, "no identity figures for this model (see the notes)");
    body.append(row);
  }
  const clip = $("table.clip tbody", node);
  clip.replaceChildren();
  CLIP_METRICS.filter(k => k in job.metrics).forEach(k => {
    const row = document.createElement("tr"); cell(row, k); cell(row, fmt(job.metrics[k])); clip.append(row);
  });
  const notes = $(".notes", node);
  notes.replaceChildren();
  const settings = Object.entries(job.settings).map(([k, v]) => `${k} ${v}`).join(", ");
  [`settings: ${settings}`, ...job.notes].forEach(t => { const li = document.createElement("li"); li.textContent = t; notes.append(li); });
  $(".output", node).hidden = false;
}

function restoreJobs() {
  let saved = [];
  try { saved = JSON.parse(sessionStorage.getItem("idcrafter-jobs") || "[]"); } catch (err) { saved = []; }
  saved.forEach(j => addPanel(j, saved.length));
}

async function init() {
  try {
    const [info, ex] = await Promise.all([api("/api/models"), api("/api/examples")]);
    state.models = info.models; state.limits = info.limits; state.examples = ex.examples;
  } catch (err) {
    showError(err.message);
    return;
  }
  renderModels();
  renderSettings();
  renderRefs();
  renderExamples();
  $("#ref-input").onchange = e => {
    const added = [...e.target.files];
    setRefs([...state.refs.map(r => r.file), ...added]);
    e.target.value = "";
  };
  $("#clear-refs").onclick = () => setRefs([]);
  $("#generate").onclick = generate;
  restoreJobs();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
