// A two-series line chart on a <canvas>: training loss (left axis, from 0 to its maximum) and
// dev accuracy (right axis, 0 to 1) against the step. No library: lines, ticks and a legend.

const LOSS = "#0b57d0", ACC = "#b3261e", INK = "#1f1f1f", GRID = "#d0d0d0";

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

/** history: [{step, epoch, loss, dev_accuracy}] (either value may be null). */
export function drawChart(canvas, history, totalSteps = null) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  g.font = "12px system-ui, sans-serif";
  const pad = { l: 48, r: 48, t: 24, b: 30 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const points = history.filter((p) => Number.isFinite(p.step));
  const maxStep = Math.max(1, totalSteps || 0, ...points.map((p) => p.step));
  const losses = points.filter((p) => Number.isFinite(p.loss));
  const maxLoss = niceMax(Math.max(0, ...losses.map((p) => p.loss)));
  const x = (s) => pad.l + (pw * s) / maxStep;
  const yLoss = (v) => pad.t + ph * (1 - v / maxLoss);
  const yAcc = (v) => pad.t + ph * (1 - v);

  // grid and axes
  g.strokeStyle = GRID; g.lineWidth = 1; g.fillStyle = INK;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + (ph * i) / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
    g.textAlign = "right"; g.fillStyle = LOSS;
    g.fillText((maxLoss * (1 - i / 4)).toPrecision(2), pad.l - 6, y + 4);
    g.textAlign = "left"; g.fillStyle = ACC;
    g.fillText(`${100 - 25 * i}%`, pad.l + pw + 6, y + 4);
  }
  g.fillStyle = INK; g.textAlign = "center";
  g.fillText("0", pad.l, h - 10);
  g.fillText(`step ${maxStep}`, pad.l + pw - 20, h - 10);

  function line(series, y, color) {
    if (!series.length) return;
    g.strokeStyle = color; g.fillStyle = color; g.lineWidth = 2;
    g.beginPath();
    series.forEach((p, i) => (i ? g.lineTo(x(p.step), y(p)) : g.moveTo(x(p.step), y(p))));
    g.stroke();
    for (const p of series) { g.beginPath(); g.arc(x(p.step), y(p), 2.5, 0, 2 * Math.PI); g.fill(); }
  }
  line(losses, (p) => yLoss(p.loss), LOSS);
  line(points.filter((p) => Number.isFinite(p.dev_accuracy)), (p) => yAcc(p.dev_accuracy), ACC);

  // legend
  g.textAlign = "left";
  [[LOSS, "training loss"], [ACC, "dev accuracy"]].forEach(([color, name], i) => {
    const lx = pad.l + 8 + i * 130;
    g.fillStyle = color; g.fillRect(lx, 8, 14, 4);
    g.fillStyle = INK; g.fillText(name, lx + 20, 14);
  });
}
