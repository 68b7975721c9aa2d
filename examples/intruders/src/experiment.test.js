// @ts-check
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { runExperiment } from './experiment.js';

beforeAll(async () => {
  await initBackend('wasm');
});

describe('the intruders experiment, short', () => {
  it('reduces a trained task adapter: λ 1 is the adapter as trained, λ 0 removes its intruders', async () => {
    const lines = [];
    const r = await runExperiment({
      // two targets and a short, fast training: seconds, and already intruders
      targetModules: ['v_proj', 'o_proj'],
      steps: 8,
      lr: 2e-2,
      lambdas: [0, 1],
      pretrainEntries: 16,
      taskEntries: 8,
      log: (l) => lines.push(l),
    });
    expect(lines.length).toBe(4);
    const [none, all] = r.rows;
    if (!none || !all) throw new Error('two rows expected');
    // the adapter learned the task
    expect(r.adapter.task).toBeLessThan(r.base.task);
    // λ 1 keeps every direction: ΔW has rank ≤ r, so the rank-r split gives it back exactly
    expect(Math.abs(all.task / r.adapter.task - 1)).toBeLessThan(1e-4);
    expect(Math.abs(all.pretrain / r.adapter.pretrain - 1)).toBeLessThan(1e-4);
    // the same intruders whatever λ, and λ 0 changes the model where there are some
    expect(none.intruders).toBe(all.intruders);
    expect(none.intruders).toBeGreaterThan(0);
    expect(Math.abs(none.pretrain / r.adapter.pretrain - 1)).toBeGreaterThan(1e-4);
    expect(r.layers.length).toBe(6 * 2);
  });
});
