/**
 * Waits until this machine's CPUs are nearly idle (other work shares them), so that a timing measures
 * the code rather than the neighbours. Returns the idle fraction it saw last.
 */
import { readFileSync } from 'node:fs';

function cpuTimes(): { idle: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] as string;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { idle, total: v.reduce((a, b) => a + b, 0) };
}

/** Idle fraction of all CPUs over `ms`. */
export async function idleFraction(ms = 1000): Promise<number> {
  const a = cpuTimes();
  await new Promise((r) => setTimeout(r, ms));
  const b = cpuTimes();
  return (b.idle - a.idle) / Math.max(b.total - a.total, 1);
}

/** Waits (up to `maxWaitMs`) for three consecutive seconds with at least `minIdle` of the CPUs idle. */
export async function waitForQuiet(
  minIdle = Number(process.env.BENCH_MIN_IDLE ?? 0.85),
  maxWaitMs = Number(process.env.BENCH_MAX_WAIT_MS ?? 600_000),
): Promise<number> {
  const start = Date.now();
  let streak = 0;
  let last = 0;
  try {
    while (Date.now() - start < maxWaitMs) {
      last = await idleFraction();
      streak = last >= minIdle ? streak + 1 : 0;
      if (streak >= 3) return last;
    }
  } catch {
    return Number.NaN; // no /proc/stat (not Linux): do not wait
  }
  console.error(`  (the CPUs did not become idle in ${maxWaitMs / 1000} s: last idle fraction ${last.toFixed(2)})`);
  return last;
}
