/**
 * Walks a dataloader pass after pass without holding it: PEFT cycles with `itertools.cycle`, which
 * keeps every batch of the first pass in memory; here each pass asks the source for a fresh iterator.
 */
import type { BatchSource } from '@lora/nn';

/** Why {@link BatchStream.next} has no further batch. */
export type StreamEnd =
  /** The first pass yielded nothing. */
  | 'empty'
  /** `maxPasses` passes are done. */
  | 'max-passes'
  /** A one-shot iterator (a generator object) is used up: it cannot start again. */
  | 'one-shot'
  /** A new pass yielded nothing. */
  | 'empty-pass';

type AnyIterator<B> = Iterator<B> | AsyncIterator<B>;

function open<B>(data: BatchSource<B>): { it: AnyIterator<B>; oneShot: boolean } {
  const source = typeof data === 'function' ? data() : data;
  const asyncIt = (source as AsyncIterable<B>)[Symbol.asyncIterator];
  if (typeof asyncIt === 'function') {
    const it = asyncIt.call(source);
    return { it, oneShot: typeof data !== 'function' && (it as unknown) === source };
  }
  const syncIt = (source as Iterable<B>)[Symbol.iterator];
  if (typeof syncIt !== 'function')
    throw new TypeError(
      'the dataloader must be an iterable or async iterable of batches (an array, a generator) or a function returning one',
    );
  const it = syncIt.call(source);
  return { it, oneShot: typeof data !== 'function' && (it as unknown) === source };
}

/** Batches in order, starting again at the first after the last (as `itertools.cycle`), up to `maxPasses` passes. */
export class BatchStream<B> {
  private it: AnyIterator<B>;
  private readonly oneShot: boolean;
  /** The current pass, from 1. */
  pass = 1;
  /** The index of the last batch given within its pass. */
  index = -1;
  private readonly data: BatchSource<B>;
  private readonly maxPasses: number;

  constructor(data: BatchSource<B>, maxPasses: number) {
    this.data = data;
    this.maxPasses = maxPasses;
    ({ it: this.it, oneShot: this.oneShot } = open(data));
  }

  async next(): Promise<{ batch: B } | { end: StreamEnd }> {
    const r = await this.it.next();
    if (!r.done) {
      this.index++;
      return { batch: r.value };
    }
    if (this.pass === 1 && this.index === -1) return { end: 'empty' };
    if (this.oneShot) return { end: 'one-shot' };
    if (this.pass >= this.maxPasses) return { end: 'max-passes' };
    ({ it: this.it } = open(this.data));
    this.pass++;
    this.index = -1;
    const again = await this.it.next();
    if (again.done) return { end: 'empty-pass' };
    this.index = 0;
    return { batch: again.value };
  }

  /** Lets a generator run its `finally` (where it may free its tensors) when the stream stops early. */
  async close(): Promise<void> {
    await this.it.return?.();
  }
}
