// @ts-check
// A live line chart on a canvas, redrawn after every step (no dependency: one line, axes, ticks).

/**
 * Draws `values` (loss per step) into `canvas`, the y axis fitted to them with a margin.
 * @param {HTMLCanvasElement} canvas
 * @param {number[]} values
 * @param {number} totalSteps  the x axis runs to this
 */
export function drawLossChart(canvas, values, totalSteps) {
  const dpr = globalThis.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext('2d'));
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  const pad = { left: 48, right: 12, top: 12, bottom: 32 };
  const pw = w - pad.left - pad.right;
  const ph = h - pad.top - pad.bottom;
  const lo = values.length ? Math.min(...values) : 0;
  const hi = values.length ? Math.max(...values) : 1;
  const span = hi - lo || 1;
  const y0 = lo - 0.1 * span;
  const y1 = hi + 0.1 * span;
  /** @param {number} step */
  const x = (step) => pad.left + (pw * (step - 1)) / Math.max(1, totalSteps - 1);
  /** @param {number} v */
  const y = (v) => pad.top + ph * (1 - (v - y0) / (y1 - y0));

  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#667';
  ctx.strokeStyle = '#e3e5ea';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(pad.left + pw, y(v));
    ctx.stroke();
    ctx.textAlign = 'right';
    ctx.fillText(v.toFixed(2), pad.left - 6, y(v) + 4);
  }
  ctx.textAlign = 'center';
  for (const s of [1, Math.ceil(totalSteps / 2), totalSteps]) ctx.fillText(String(s), x(s), h - pad.bottom + 16);
  ctx.fillText('step', pad.left + pw / 2, h - 4);
  ctx.save();
  ctx.translate(12, pad.top + ph / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText('training loss', 0, 0);
  ctx.restore();

  ctx.strokeStyle = '#3b5bdb';
  ctx.lineWidth = 2;
  ctx.beginPath();
  values.forEach((v, i) => {
    if (i === 0) ctx.moveTo(x(i + 1), y(v));
    else ctx.lineTo(x(i + 1), y(v));
  });
  ctx.stroke();
  ctx.fillStyle = '#3b5bdb';
  values.forEach((v, i) => {
    ctx.beginPath();
    ctx.arc(x(i + 1), y(v), 2.5, 0, 2 * Math.PI);
    ctx.fill();
  });
}
