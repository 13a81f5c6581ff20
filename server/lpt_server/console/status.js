// Status: readiness (/ready) and the server's own Prometheus metrics (/metrics, names from
// server/lpt_server/metrics.py), read every 2 seconds while the view is shown.

import { probe, text } from "./api.js";
import { bucketCounts, histogram, mean, parse, quantile, total } from "./prom.js";
import { $, el, showError } from "./ui.js";

const REFRESH_MS = 2000;
let timer = null;
let generation = 0;                    // a stopped loop whose refresh is still running does not restart

const ms = (s) => (s === null ? "-" : `${(1000 * s).toFixed(s < 0.01 ? 2 : 1)} ms`);
const num = (v, digits = 0) => (v === null || Number.isNaN(v) ? "-" : v.toFixed(digits));

/** The rows of the Status list, [term, value], from parsed samples. */
export function summarize(samples) {
  const ok = (labels) => labels.status === "200";
  const latency = histogram(samples, "lpt_request_duration_seconds", ok);
  const wait = histogram(samples, "lpt_queue_wait_seconds");
  const inference = histogram(samples, "lpt_inference_duration_seconds");
  const rows = histogram(samples, "lpt_batch_rows");
  const tasks = histogram(samples, "lpt_batch_tasks");
  const answered = total(samples, "lpt_requests_total");
  const failed = total(samples, "lpt_requests_total", (l) => l.status !== "200");
  const hits = total(samples, "lpt_layer_cache_hits_total"), misses = total(samples, "lpt_layer_cache_misses_total");
  return [
    ["queue depth (rows waiting)", num(total(samples, "lpt_queue_size"))],
    ["requests in flight", num(total(samples, "lpt_requests_in_flight"))],
    ["worker", total(samples, "lpt_worker_alive") === 1 ? "alive" : "not running"],
    ["adapters resident / registered",
      `${num(total(samples, "lpt_adapters_resident"))} / ${num(total(samples, "lpt_adapters_registered"))}`],
    ["requests (counted per task) / not 200", `${num(answered ?? 0)} / ${num(failed ?? 0)}`],
    ["latency p50 / p95 / mean (200s)",
      `${ms(quantile(latency, 0.5))} / ${ms(quantile(latency, 0.95))} / ${ms(mean(latency))}`],
    ["queue wait p50 / p95", `${ms(quantile(wait, 0.5))} / ${ms(quantile(wait, 0.95))}`],
    ["engine time per batch, mean / p95", `${ms(mean(inference))} / ${ms(quantile(inference, 0.95))}`],
    ["batches run", num(rows ? rows.count : null)],
    ["rows per batch, mean", num(mean(rows), 1)],
    ["distinct tasks per batch, mean", num(mean(tasks), 1)],
    ["layer-k cache hit rate", hits + misses ? `${((100 * hits) / (hits + misses)).toFixed(0)}%` : "-"],
  ];
}

function renderBatches(h) {
  const counts = bucketCounts(h);
  const most = Math.max(1, ...counts.map(([, n]) => n));
  $("status-batches").replaceChildren(...counts.map(([label, n]) =>
    el("div", { class: "score" },
      el("span", { class: "score-label" }, `${label} rows`),
      el("span", { class: "bar", "aria-hidden": "true" }, el("span", { style: { width: `${(100 * n) / most}%` } })),
      el("span", { class: "score-value" }, `${n} batches`))));
}

async function refresh() {
  try {
    const [ready, body] = await probe("ready");
    const state = $("status-ready");
    state.textContent = ready ? "ready" : "not ready";
    state.dataset.state = ready ? "succeeded" : "failed";
    $("status-reason").textContent = ready ? "" : body?.error?.message || "";
    const samples = parse(await text("metrics"));
    $("status-list").replaceChildren(...summarize(samples).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    renderBatches(histogram(samples, "lpt_batch_rows"));
    showError($("status-error"), null);
  } catch (e) {
    showError($("status-error"), e instanceof TypeError ? "the server does not answer" : e);
  }
}

/** Start (true) or stop (false) refreshing: only while the view is shown. */
export function live(on) {
  clearTimeout(timer);
  const mine = ++generation;
  if (!on) return;
  const tick = async () => {
    await refresh();
    if (mine === generation) timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
}
