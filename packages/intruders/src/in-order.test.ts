import { describe, expect, it } from 'vitest';
import { runInOrder } from './in-order';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('runInOrder', () => {
  it('hands results over in index order while jobs finish out of order, with at most `concurrency` in flight', async () => {
    const delays = [30, 5, 20, 1, 12, 2, 8];
    let inFlight = 0;
    let most = 0;
    const finishedAt: number[] = [];
    const handed: [number, string][] = [];
    await runInOrder(
      delays.length,
      3,
      async (i) => {
        inFlight++;
        most = Math.max(most, inFlight);
        await sleep(delays[i] as number);
        inFlight--;
        finishedAt.push(i);
        return `r${i}`;
      },
      (i, r) => handed.push([i, r]),
    );
    expect(handed).toEqual(delays.map((_, i) => [i, `r${i}`]));
    expect(most).toBe(3);
    // the jobs did finish out of order (else the ordering proved nothing)
    expect(finishedAt).not.toEqual([...finishedAt].sort((a, b) => a - b));
  });

  it('at a failure starts nothing more, waits for the jobs in flight, and throws it', async () => {
    const started: number[] = [];
    let settled = 0;
    const handed: number[] = [];
    const run = runInOrder(
      10,
      2,
      async (i) => {
        started.push(i);
        try {
          await sleep(i === 1 ? 5 : 20);
          if (i === 1) throw new Error('layer 1 failed');
          return i;
        } finally {
          settled++;
        }
      },
      (i) => handed.push(i),
    );
    await expect(run).rejects.toThrow('layer 1 failed');
    expect(started).toEqual([0, 1]);
    expect(settled).toBe(2); // job 0 was still running when 1 failed: awaited, its result dropped
    expect(handed).toEqual([]);
  });

  it('stops at an aborted signal with its reason, and with concurrency 1 is the plain loop', async () => {
    const controller = new AbortController();
    const order: string[] = [];
    const run = runInOrder(
      5,
      1,
      async (i) => {
        order.push(`start ${i}`);
        if (i === 2) controller.abort(new Error('stop'));
        return i;
      },
      (i) => order.push(`done ${i}`),
      controller.signal,
    );
    await expect(run).rejects.toThrow('stop');
    expect(order).toEqual(['start 0', 'done 0', 'start 1', 'done 1', 'start 2', 'done 2']);
  });
});
