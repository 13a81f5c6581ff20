// Try: one text (and an optional second text for pair tasks), one or several tasks, each
// task's label and a bar per label score (POST /v1/classify with raw_scores).

import { api } from "./api.js";
import { $, el, errorLine } from "./ui.js";

const FILTER_FROM = 12;                 // a filter box over the tasks from this many on
let labelsOf = {};                      // task -> its labels in the adapter's order
let latest = 0;                         // only the newest loadTasks() call fills the list
const report = errorLine($("try-error"));   // sources: "list", "classify"

/** Fill the task checkboxes from GET /v1/adapters; `only` (a task name) is checked alone. */
export async function loadTasks(only = null) {
  const list = $("try-task-list");
  const checked = new Set(only ? [only] : [...list.querySelectorAll("input:checked")].map((c) => c.value));
  const mine = ++latest;
  let adapters;
  try {
    ({ adapters } = await api("v1/adapters"));
    report("list", null);
  } catch (e) {
    if (mine !== latest) return;
    report("list", e);
    if (!list.querySelector("input")) {    // never loaded: not "loading..." for good
      list.replaceChildren(el("p", { class: "hint" }, "The tasks could not be listed: see the message above."));
    }
    return;
  }
  if (mine !== latest) return;
  labelsOf = Object.fromEntries(adapters.map((a) => [a.name, a.labels]));
  list.replaceChildren();
  if (!adapters.length) {
    list.append(el("p", { class: "hint" }, "No adapters yet: upload one (Adapters) or train one (Train)."));
    return;
  }
  if (!adapters.some((a) => checked.has(a.name))) checked.add(adapters[0].name);   // none left checked: the first
  if (adapters.length < FILTER_FROM) $("try-filter").value = "";   // a hidden filter filters nothing
  $("try-filter").hidden = adapters.length < FILTER_FROM;
  for (const a of adapters) {
    const id = `try-task-${a.name}`;
    list.append(el("span", { class: "check" },
      el("input", { type: "checkbox", id, value: a.name, checked: checked.has(a.name) }),
      el("label", { for: id, title: a.labels.join(", ") }, a.name)));
  }
  filter();
}

/** Show the tasks whose name holds the filter's text; a checked task always stays in view. */
function filter() {
  const words = $("try-filter").value.trim().toLowerCase();
  for (const span of $("try-task-list").querySelectorAll(".check")) {
    const box = span.querySelector("input");
    span.hidden = Boolean(words) && !box.checked && !box.value.toLowerCase().includes(words);
  }
}

function scoreRow(label, score, best) {
  const pct = (100 * score).toFixed(1);
  return el("div", { class: best ? "score best" : "score" },
    el("span", { class: "score-label", title: label }, label),
    el("span", { class: "bar", "aria-hidden": "true" }, el("span", { style: { width: `${pct}%` } })),
    el("span", { class: "score-value" }, `${pct}%`));
}

function render(answers, truncated) {
  const out = $("try-results");
  out.replaceChildren();
  for (const a of answers) {
    const labels = labelsOf[a.task] || Object.keys(a.scores || { [a.label]: a.score });
    const scores = a.scores || { [a.label]: a.score };
    out.append(el("article", { class: "result", "data-task": a.task },
      el("h3", {}, a.task, ": ", el("strong", { class: "answer" }, a.label), ` (${(100 * a.score).toFixed(1)}%)`),
      labels.map((l) => scoreRow(l, scores[l] ?? 0, l === a.label))));
  }
  if (truncated) out.append(el("p", { class: "hint" }, "The text was cut to the server's token limit."));
  out.scrollIntoView({ block: "nearest" });          // below a long task list, out of sight otherwise
}

async function classify(event) {
  event.preventDefault();
  const text = $("try-text").value, pair = $("try-pair").value;
  const tasks = [...$("try-task-list").querySelectorAll("input:checked")].map((c) => c.value);
  report(null, null);
  if (!text.trim()) return report("classify", "Write a text to classify.");
  if (!tasks.length) return report("classify", "Pick at least one task.");
  const input = pair.trim() ? [text, pair] : text;
  $("try-submit").disabled = true;
  $("try-results").classList.add("stale");          // the last answer, until this one comes
  try {
    const body = await api("v1/classify", { method: "POST", json: { inputs: [input], tasks, raw_scores: true } });
    render(body.results[0], body.truncated_inputs);
  } catch (e) {
    $("try-results").replaceChildren();
    if (e.status === 404) await loadTasks();         // a task deleted meanwhile: off the list
    report("classify", e);
  } finally {
    $("try-results").classList.remove("stale");
    $("try-submit").disabled = false;
  }
}

export function init() {
  $("try-form").addEventListener("submit", classify);
  $("try-filter").addEventListener("input", filter);
  // Ctrl+Enter in the text sends, as in most chat and search boxes
  $("try-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("try-form").requestSubmit();
  });
}
