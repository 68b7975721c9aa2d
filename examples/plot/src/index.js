// Line charts for the examples' experiments (loss per step, perplexity against a parameter…): a
// Vega-Lite spec compiled by vega-lite, rendered to SVG by vega's headless view, and rasterised to PNG
// by resvg, so every committed plot comes from a plotting library and can be re-made by one call.
import { writeFile } from 'node:fs/promises';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile } from 'vega-lite';

/**
 * @typedef {{ name: string, points: Array<[number, number]>, band?: Array<[number, number, number]> }} Series
 *   `band`: an optional shaded range [x, low, high] around the line (e.g. the spread over seeds)
 * @typedef {{
 *   title: string, x: string, y: string, series: Series[],
 *   logY?: boolean, width?: number, height?: number, points?: boolean
 * }} LineChart
 */

/**
 * The Vega-Lite spec of a line chart, one colour per series.
 * @param {LineChart} chart
 */
export function lineChartSpec(chart) {
  const values = chart.series.flatMap((s) => s.points.map(([x, y]) => ({ series: s.name, x, y })));
  const order = chart.series.map((s) => s.name);
  const x = { field: 'x', type: 'quantitative', title: chart.x };
  const y = { field: 'y', type: 'quantitative', title: chart.y, scale: chart.logY ? { type: 'log' } : { zero: false } };
  const color = { field: 'series', type: 'nominal', title: null, sort: order, legend: { labelLimit: 0 } };
  const head = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: chart.title,
    width: chart.width ?? 560,
    height: chart.height ?? 320,
    background: 'white',
  };
  const line = { mark: { type: 'line', point: chart.points ?? false }, encoding: { x, y, color } };
  const bands = chart.series.flatMap((s) => (s.band ?? []).map(([bx, lo, hi]) => ({ series: s.name, x: bx, lo, hi })));
  if (bands.length === 0) return { ...head, data: { values }, ...line };
  return {
    ...head,
    layer: [
      {
        data: { values: bands },
        mark: { type: 'area', opacity: 0.2 },
        encoding: { x, y: { ...y, field: 'lo' }, y2: { field: 'hi' }, color },
      },
      { data: { values }, ...line },
    ],
  };
}

/**
 * Renders a Vega-Lite spec to SVG text.
 * @param {object} spec
 * @returns {Promise<string>}
 */
export async function renderSvg(spec) {
  // the spec is built by lineChartSpec (plain JSON); vega-lite validates it when compiling
  const view = new vega.View(vega.parse(compile(/** @type {import('vega-lite').TopLevelSpec} */ (spec)).spec), {
    renderer: 'none',
  });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/**
 * Writes a line chart as `<path>.svg` and `<path>.png` (2× scale).
 *
 * @example
 * await plotLines({ title: 'loss', x: 'step', y: 'loss', series: [{ name: 'LoRA', points: [[0, 3.2], [10, 2.1]] }] }, 'out/loss');
 * @param {LineChart} chart
 * @param {string} path without extension
 * @returns {Promise<{ svg: string, png: string }>}
 */
export async function plotLines(chart, path) {
  const svg = await renderSvg(lineChartSpec(chart));
  const png = new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, font: { loadSystemFonts: true } }).render().asPng();
  await writeFile(`${path}.svg`, svg);
  await writeFile(`${path}.png`, png);
  return { svg: `${path}.svg`, png: `${path}.png` };
}
