/** What {@link getEvaStateDict} reports after each batch (PEFT's tqdm bar says "x/y layers have converged"). */
export interface EvaProgress {
  /** Batches the incremental PCA has used so far (forward passes with hooks). */
  step: number;
  /** The pass over the dataloader this batch came from (1 for the first). */
  pass: number;
  /** The batch's index within its pass. */
  batch: number;
  /** Target layers whose components (as many as their current rank) have converged; equal-input layers count with their group. */
  convergedLayers: number;
  /** Target layers in all. */
  totalLayers: number;
  /** Milliseconds since the call started. */
  elapsedMs: number;
}

function isNodeTty(): boolean {
  const p = (globalThis as { process?: { stderr?: { isTTY?: boolean } } }).process;
  return p?.stderr?.isTTY === true;
}

/** Whether `progressBar` asks for a bar: true, or 'auto' on a Node terminal. */
export function wantsBar(option: boolean | 'auto' | undefined): boolean {
  return option === true || ((option ?? 'auto') === 'auto' && isNodeTty());
}

/**
 * A one-line terminal bar on stderr for EVA's progress (what `lora eva` and the examples show), or a
 * writer of your own (`write(line)` without the carriage return).
 *
 * @example
 * ```ts
 * const bar = evaProgressBar();
 * await initializeLoraEvaWeights(peft, batches, { onProgress: bar.update });
 * bar.done();
 * ```
 */
export function evaProgressBar(write?: (text: string) => void): { update: (p: EvaProgress) => void; done: () => void } {
  const out =
    write ??
    ((text: string) =>
      (globalThis as unknown as { process: { stderr: { write(s: string): void } } }).process.stderr.write(`\r${text}`));
  let drew = false;
  return {
    update: (p) => {
      const width = 24;
      const filled = Math.round((p.convergedLayers / Math.max(1, p.totalLayers)) * width);
      out(
        `EVA [${'#'.repeat(filled).padEnd(width, '.')}] ${p.convergedLayers}/${p.totalLayers} layers converged, ` +
          `batch ${p.step} (pass ${p.pass}), ${(p.elapsedMs / 1000).toFixed(1)} s`,
      );
      drew = true;
    },
    done: () => {
      if (drew && !write) out('\n');
    },
  };
}
