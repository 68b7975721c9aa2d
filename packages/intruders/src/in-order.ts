import { checkAborted } from './options';

/**
 * Runs the jobs `start(0)` … `start(count − 1)` with at most `concurrency` in flight and hands each
 * result to `done` in index order, as soon as it and every earlier one are in (so what `done` logs or
 * builds comes out in the order of a plain loop). At the first failure, or once `signal` fires, no
 * further job starts; the jobs in flight are awaited, results after the failure are dropped, and the
 * failure (or the signal's reason) is thrown. With `concurrency` 1 this is the plain loop.
 */
export async function runInOrder<T>(
  count: number,
  concurrency: number,
  start: (index: number) => Promise<T>,
  done: (index: number, result: T) => void,
  signal?: AbortSignal,
): Promise<void> {
  const finished = new Map<number, T>();
  let next = 0;
  let handed = 0;
  let failure: { error: unknown } | null = null;
  const worker = async () => {
    while (!failure && next < count) {
      try {
        checkAborted(signal);
        const index = next++;
        finished.set(index, await start(index));
        while (!failure && finished.has(handed)) {
          const result = finished.get(handed) as T;
          finished.delete(handed);
          done(handed, result);
          handed++;
        }
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, count)) }, worker));
  if (failure) throw (failure as { error: unknown }).error;
}
