import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { lineChartSpec, plotLines } from './index.js';

test('a line chart becomes an SVG with one path per series and a PNG', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'plot-'));
  try {
    const chart = {
      title: 'loss',
      x: 'step',
      y: 'loss',
      series: [
        {
          name: 'a',
          points: [
            [0, 3],
            [1, 2],
            [2, 1.5],
          ],
        },
        {
          name: 'b',
          points: [
            [0, 3],
            [1, 2.5],
            [2, 2.2],
          ],
        },
      ],
    };
    assert.equal(lineChartSpec(chart).data.values.length, 6);
    const { svg, png } = await plotLines(chart, join(dir, 'loss'));
    const text = await readFile(svg, 'utf8');
    assert.match(text, /^<svg/);
    assert.equal((text.match(/class="mark-line role-mark marks"/g) ?? []).length, 2); // one line per series
    assert.equal((text.match(/<path[^>]*d="M/g) ?? []).length >= 2, true);
    const bytes = await readFile(png);
    assert.deepEqual([...bytes.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a band shades a range around its line', async () => {
  const chart = {
    title: 'loss',
    x: 'step',
    y: 'loss',
    series: [
      {
        name: 'a',
        points: [
          [0, 3],
          [1, 2],
        ],
        band: [
          [0, 2.5, 3.5],
          [1, 1.5, 2.5],
        ],
      },
    ],
  };
  const spec = lineChartSpec(chart);
  assert.equal(spec.layer.length, 2);
  assert.equal(spec.layer[0].data.values.length, 2);
  const dir = await mkdtemp(join(tmpdir(), 'plot-'));
  try {
    const { svg } = await plotLines(chart, join(dir, 'band'));
    const text = await readFile(svg, 'utf8');
    assert.equal((text.match(/class="mark-area role-mark/g) ?? []).length, 1);
    assert.equal((text.match(/class="mark-line role-mark/g) ?? []).length, 1);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
