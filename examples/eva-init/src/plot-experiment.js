// @ts-check
// Plots what src/experiment.js wrote: the training loss per step of EVA and of the default init, the
// mean over seeds with a 5-step trailing mean (one batch's loss is noisy).
//
//   node src/plot-experiment.js [results/experiment.json]   # -> results/loss.svg, results/loss.png
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { plotLines } from '@lora-examples/plot';

const file = process.argv[2] ?? join(import.meta.dirname, '..', 'results', 'experiment.json');
const result = JSON.parse(await readFile(file, 'utf8'));
const { steps, seeds, r, evaConfig, evaBatches } = result.settings;

/** @param {'default' | 'eva'} init */
function curve(init) {
  /** @type {{ init: string, losses: number[] }[]} */
  const mine = result.runs.filter((/** @type {{ init: string }} */ x) => x.init === init);
  const mean = Array.from({ length: steps }, (_, s) => mine.reduce((a, x) => a + (x.losses[s] ?? 0), 0) / mine.length);
  return mean.map((_, s) => {
    const w = mean.slice(Math.max(0, s - 4), s + 1);
    return /** @type {[number, number]} */ ([s + 1, w.reduce((a, b) => a + b, 0) / w.length]);
  });
}
const out = join(dirname(file), 'loss');
await plotLines(
  {
    title: `fortune-llama on fortune-cookie entries: LoRA r=${r} on every projection (${result.backend}, mean of ${seeds.length} seeds, 5-step trailing mean)`,
    x: 'step',
    y: 'training loss',
    series: [
      { name: 'default init (Kaiming A, B = 0)', points: curve('default') },
      { name: `EVA (rho ${evaConfig.rho}, ${evaBatches} batches)`, points: curve('eva') },
    ],
  },
  out,
);
console.log(`wrote ${out}.svg and ${out}.png`);
