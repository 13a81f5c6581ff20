// The Prometheus text exposition format (what GET /metrics answers), parsed into samples, and the
// few summaries the Status view shows: a value summed over labels, a histogram's count, mean,
// quantiles (linear inside a bucket, as Prometheus' histogram_quantile does) and per-bucket counts.

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/g;

function number(s) {
  if (s === "+Inf" || s === "Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  return Number(s);                       // "NaN" -> NaN
}

function unescape(s) {
  return s.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
}

/** Text -> [{name, labels: {k: v}, value}] (comments and blank lines skipped). */
export function parse(text) {
  const out = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = SAMPLE.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(LABEL)) labels[k] = unescape(v);
    out.push({ name: m[1], labels, value: number(m[3]) });
  }
  return out;
}

/** The sum of every sample named `name` whose labels pass `keep` (all by default); null if none. */
export function total(samples, name, keep = () => true) {
  const found = samples.filter((s) => s.name === name && keep(s.labels));
  return found.length ? found.reduce((a, s) => a + s.value, 0) : null;
}

/** A histogram summed over its labels (those `keep` passes):
 * {count, sum, buckets: [[le, cumulative count], ...]}, or null if the metric is absent. */
export function histogram(samples, name, keep = () => true) {
  const count = total(samples, `${name}_count`, keep);
  if (count === null) return null;
  const byLe = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket` || !keep(s.labels)) continue;
    const le = number(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  const buckets = [...byLe.entries()].sort((a, b) => a[0] - b[0]);
  return { count, sum: total(samples, `${name}_sum`, keep), buckets };
}

export function mean(h) {
  return h && h.count ? h.sum / h.count : null;
}

/** The q-quantile of a histogram, interpolated inside its bucket; null when it is empty. */
export function quantile(h, q) {
  if (!h || !h.count) return null;
  const rank = q * h.count;
  let lower = 0, below = 0;
  for (const [le, cumulative] of h.buckets) {
    if (cumulative >= rank) {
      if (le === Infinity) return lower;            // past the last finite bucket: its bound
      const inBucket = cumulative - below;
      return inBucket ? lower + ((le - lower) * (rank - below)) / inBucket : le;
    }
    lower = le;
    below = cumulative;
  }
  return lower;
}

/** Per-bucket (not cumulative) counts: [[label, count], ...], e.g. [["<= 1", 3], ["<= 2", 0], ...]. */
export function bucketCounts(h) {
  if (!h) return [];
  let previous = 0;
  return h.buckets.map(([le, cumulative]) => {
    const n = cumulative - previous;
    previous = cumulative;
    return [le === Infinity ? "more" : `<= ${le}`, n];
  });
}
