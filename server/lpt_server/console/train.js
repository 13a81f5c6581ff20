// Train: a labelled file -> POST /v1/train (multipart) -> follow GET /v1/train/{id} until the job
// ends, drawing its loss and dev accuracy; then try the new task in one click.

import { api, serverSettings } from "./api.js";
import { drawChart } from "./chart.js";
import { readColumns } from "./columns.js";
import { $, confirmDialog, el, errorLine, nameFromFile, overLimit, uploadProgress } from "./ui.js";

const POLL_MS = 1000;
const ENDED = new Set(["succeeded", "failed", "cancelled"]);
let following = null;                   // the id of the job shown
let timer = null;
let tryTask = () => {};
const report = errorLine($("train-error"));   // sources: "list", "poll", "action"

function fillSelect(select, columns, preferred, optional, avoid = null) {
  const old = select.value;
  select.replaceChildren(...(optional ? [el("option", { value: "" }, "(none)")] : []),
    ...columns.map((c) => el("option", { value: c }, c)));
  const pick = [old, ...preferred].find((c) => columns.includes(c));
  // no known name: the first column, or for a second choice the first one not taken already
  select.value = pick ?? (optional ? "" : columns.find((c) => c !== avoid) ?? columns[0] ?? "");
}

async function onData() {
  const file = $("train-data").files[0];
  report(null, null);
  $("train-columns-note").textContent = "";
  if (!file) return;
  let format, columns;
  try {
    ({ format, columns } = await readColumns(file));
  } catch (e) {
    return report("action", `${file.name}: ${e.message}`);
  }
  fillSelect($("train-text"), columns, ["text", "sentence", "sentence1", "question", "content"], false);
  fillSelect($("train-label"), columns, ["label", "labels", "category", "class", "target"], false, $("train-text").value);
  fillSelect($("train-pair"), columns, ["text_pair", "sentence2"], true);
  nameFromFile($("train-task"), file.name);
  $("train-columns-note").textContent = `${file.name}: ${format.toUpperCase()}, columns ${columns.join(", ")}`;
}

function formData() {
  const data = $("train-data").files[0], dev = $("train-dev").files[0];
  if (!data) throw new Error("Choose a training file.");
  const form = new FormData();
  form.append("data", data, data.name);
  if (dev) form.append("dev", dev, dev.name);
  const fields = {
    task: $("train-task").value.trim(), text_column: $("train-text").value, label_column: $("train-label").value,
    text_pair_column: $("train-pair").value, method: $("train-method").value,
    epochs: $("train-epochs").value, seed: $("train-seed").value,
  };
  if (!fields.task) throw new Error("Name the task.");
  if (!fields.text_column || !fields.label_column) throw new Error("Pick the text and the label columns.");
  for (const [k, v] of Object.entries(fields)) if (v !== "") form.append(k, v);
  return form;
}

async function start(event) {
  event.preventDefault();
  report(null, null);
  let form;
  try { form = formData(); } catch (e) { return report("action", e.message); }
  const files = [$("train-data").files[0], $("train-dev").files[0]].filter(Boolean);
  const limits = await serverSettings();
  const tooBig = overLimit(files.map((f) => f.name).join(" + "), files.reduce((n, f) => n + f.size, 0),
                           limits?.max_train_bytes, "LPT_MAX_TRAIN_BYTES");
  if (tooBig) return report("action", tooBig);
  $("train-submit").disabled = true;
  try {
    const job = await api("v1/train", { method: "POST", body: form, admin: true,
                                        onProgress: uploadProgress($("train-progress"), files.map((f) => f.name).join(" + ")) });
    follow(job);
  } catch (e) {
    report("action", e);
  } finally {
    uploadProgress($("train-progress"), null);
    $("train-submit").disabled = false;
  }
  loadJobs();
}

// a time as the API gives it: an ISO string, or seconds since the epoch
function when(v) {
  return v === null || v === undefined ? "" : new Date(typeof v === "number" ? v * 1000 : v).toLocaleString();
}

function fmt(v, digits = 3) {
  return Number.isFinite(v) ? v.toFixed(digits) : "-";
}

function metricText(name, m) {
  if (m === null || m === undefined) return null;
  const acc = typeof m === "number" ? m : m.accuracy;
  return Number.isFinite(acc) ? `${name} accuracy ${(100 * acc).toFixed(1)}%` : `${name}: ${JSON.stringify(m)}`;
}

function render(job) {
  $("train-job").hidden = false;
  $("job-id").textContent = job.id;
  $("job-task").textContent = job.task;
  const state = $("job-state");
  state.textContent = job.state;
  state.dataset.state = job.state;
  const p = job.progress || {};
  $("job-progress").textContent = p.epochs
    ? `epoch ${p.epoch ?? 0}/${p.epochs}, step ${p.step ?? 0}/${p.steps ?? "?"}, loss ${fmt(p.loss)}, dev accuracy ${fmt(p.dev_accuracy)}`
    : "";
  drawChart($("train-chart"), job.history || [], p.steps);
  const metrics = job.metrics || {};
  $("job-metrics").textContent = [metricText("dev", metrics.dev), metricText("test", metrics.test)].filter(Boolean).join("; ");
  $("job-message").textContent = !job.error ? "" : job.state === "cancelled" ? `Cancelled: ${job.error}` : `Failed: ${job.error}`;
  $("job-cancel").hidden = ENDED.has(job.state);
  const tryButton = $("job-try");
  tryButton.hidden = !(job.state === "succeeded" && job.adapter);
  if (job.adapter) tryButton.dataset.task = job.adapter.name;
}

function follow(job) {
  following = job.id;
  clearTimeout(timer);
  render(job);
  if (!ENDED.has(job.state)) timer = setTimeout(poll, POLL_MS);
  else loadJobs();
}

async function poll() {
  const id = following;
  try {
    const job = await api(`v1/train/${encodeURIComponent(id)}`, { admin: true, ask: false });
    if (id !== following) return;
    report("poll", null);                   // the server answers again
    follow(job);
  } catch (e) {
    if (id !== following) return;
    if (e.status === 404) return lost(id);
    report("poll", e);
    // no answer (0: a restart, the network) or a 5xx: try again; a 4xx will not change by itself
    if (e.status === 0 || e.status >= 500) timer = setTimeout(poll, 3 * POLL_MS);
  }
}

/** The server no longer knows the job shown: it restarted without a journal, or another replica answered. */
function lost(id) {
  clearTimeout(timer);
  const state = $("job-state");
  state.textContent = "unknown";
  state.dataset.state = "lost";
  $("job-message").textContent = `The server no longer knows job ${id}: it restarted without LPT_TRAIN_JOURNAL `
    + "(a job that was running is lost), or another replica answered. Its adapter, if it was stored, is in the Adapters list.";
  $("job-cancel").hidden = true;
  $("job-try").hidden = true;
}

async function cancel() {
  if (!(await confirmDialog(`Cancel training job ${following}? A running job stops at its next step; nothing is stored.`,
                            "Cancel the job"))) return;
  try {
    follow(await api(`v1/train/${encodeURIComponent(following)}`, { method: "DELETE", admin: true }));
  } catch (e) {
    report("action", e);
  }
}

export async function loadJobs() {
  let jobs;
  try {
    ({ jobs } = await api("v1/train", { admin: true, ask: false }));
  } catch (e) {
    // no admin key yet (401: the key is asked for on Start), or writes disabled (403): the server's words
    return report("list", e);
  }
  report("list", null);                   // an earlier failure to list is over
  const rows = jobs.map((j) => el("tr", { "data-job": j.id },
    el("th", { scope: "row" }, el("code", {}, j.id)), el("td", {}, j.task), el("td", {}, j.state),
    el("td", {}, when(j.created_at)),
    el("td", {}, el("button", { type: "button", "aria-label": `Show job ${j.id}`, onclick: () => follow(j) }, "Show"))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "hint" }, "No training jobs yet.")));
  $("jobs-table").tBodies[0].replaceChildren(...rows);
  const shown = jobs.find((j) => j.id === following);
  if (!following && jobs.length && !ENDED.has(jobs[0].state)) follow(jobs[0]);   // one running: show it
  else if (shown && ENDED.has(shown.state)) render(shown);
  else if (shown) follow(shown);            // running: polled again (after a poll lost it, or keys were fixed)
  else if (following && !shown && !ENDED.has($("job-state").dataset.state) && $("job-state").dataset.state !== "lost") {
    poll();                                 // a job shown running that the server no longer lists: poll says what
  }
}

export function init(onTry) {
  tryTask = onTry;
  $("train-data").addEventListener("change", onData);
  $("train-form").addEventListener("submit", start);
  $("job-cancel").addEventListener("click", cancel);
  $("job-try").addEventListener("click", () => tryTask($("job-try").dataset.task));
  $("jobs-refresh").addEventListener("click", loadJobs);
}
