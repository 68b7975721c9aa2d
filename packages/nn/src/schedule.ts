/**
 * Learning-rate schedules as multipliers of the base rate, step by step, matching Hugging Face's
 * `get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup` and
 * `get_constant_schedule_with_warmup`.
 *
 * @example
 * ```ts
 * const factor = linearWarmupSchedule({ warmupSteps: 100, totalSteps: 1000 });
 * optimizer.lr = baseLr * factor(step);
 * ```
 */
export type Schedule = (step: number) => number;

function checkSteps(warmupSteps: number, totalSteps?: number): void {
  if (!Number.isInteger(warmupSteps) || warmupSteps < 0)
    throw new Error(`warmupSteps must be a non-negative integer, got ${warmupSteps}`);
  if (totalSteps !== undefined && (!Number.isInteger(totalSteps) || totalSteps <= 0))
    throw new Error(`totalSteps must be a positive integer, got ${totalSteps}`);
}

/** Linear warm-up from 0 to 1 over `warmupSteps`, then linear decay to 0 at `totalSteps`. */
export function linearWarmupSchedule(o: { warmupSteps: number; totalSteps: number }): Schedule {
  checkSteps(o.warmupSteps, o.totalSteps);
  return (step) => {
    if (step < o.warmupSteps) return step / Math.max(1, o.warmupSteps);
    return Math.max(0, (o.totalSteps - step) / Math.max(1, o.totalSteps - o.warmupSteps));
  };
}

/** Linear warm-up, then a half-cosine (or `numCycles` of it) down to 0 at `totalSteps`. */
export function cosineWarmupSchedule(o: { warmupSteps: number; totalSteps: number; numCycles?: number }): Schedule {
  checkSteps(o.warmupSteps, o.totalSteps);
  const cycles = o.numCycles ?? 0.5;
  return (step) => {
    if (step < o.warmupSteps) return step / Math.max(1, o.warmupSteps);
    const progress = (step - o.warmupSteps) / Math.max(1, o.totalSteps - o.warmupSteps);
    return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)));
  };
}

/** Linear warm-up, then constant 1. */
export function constantWarmupSchedule(o: { warmupSteps: number }): Schedule {
  checkSteps(o.warmupSteps);
  return (step) => (step < o.warmupSteps ? step / Math.max(1, o.warmupSteps) : 1);
}
