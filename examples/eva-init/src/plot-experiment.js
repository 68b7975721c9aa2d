// @ts-check
// Plots what src/experiment.js wrote: the training loss per step of EVA and of the default init, the
// mean over seeds of each seed's 5-step trailing mean (one batch's loss is noisy), shaded from the
// lowest to the highest seed.
//
//   node src/plot-experiment.js [results/experiment.json]   # -> results/loss.svg, results/loss.png
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { plotLines } from '@lora-examples/plot';

const file = process.argv[2] ?? join(import.meta.dirname, '..', 'results', 'experiment.json');
const result = JSON.parse(await readFile(file, 'utf8'));
const { steps, seeds, r, evaConfig, evaBatches } = result.settings;

/** 5-step trailing mean of a per-step series. @param {number[]} v */
const smooth = (v) =>
  v.map((_, s) => {
    const w = v.slice(Math.max(0, s - 4), s + 1);
    return w.reduce((a, b) => a + b, 0) / w.length;
  });

/** The mean over seeds of each seed's smoothed loss, and the band from the lowest to the highest seed. @param {'default' | 'eva'} init */
function curve(init) {
  /** @type {{ init: string, losses: number[] }[]} */
  const mine = result.runs.filter((/** @type {{ init: string }} */ x) => x.init === init);
  const perSeed = mine.map((x) => smooth(Array.from({ length: steps }, (_, s) => x.losses[s] ?? Number.NaN)));
  const at = (/** @type {number} */ s) => perSeed.map((c) => /** @type {number} */ (c[s]));
  return {
    points: Array.from(
      { length: steps },
      (_, s) => /** @type {[number, number]} */ ([s + 1, at(s).reduce((a, b) => a + b, 0) / mine.length]),
    ),
    band:
      mine.length > 1
        ? Array.from(
            { length: steps },
            (_, s) => /** @type {[number, number, number]} */ ([s + 1, Math.min(...at(s)), Math.max(...at(s))]),
          )
        : undefined,
  };
}
const out = join(dirname(file), 'loss');
await plotLines(
  {
    title: `fortune-llama, LoRA r=${r} on every projection (${result.backend}): mean of ${seeds.length} seed${seeds.length > 1 ? 's, lowest to highest shaded' : ''}, 5-step trailing mean`,
    x: 'step',
    y: 'training loss',
    series: [
      { name: 'default init (Kaiming A, B = 0)', ...curve('default') },
      { name: `EVA (rho ${evaConfig.rho}, ${evaBatches} batches)`, ...curve('eva') },
    ],
  },
  out,
);
console.log(`wrote ${out}.svg and ${out}.png`);
