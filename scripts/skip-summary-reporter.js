// @ts-check
/**
 * A vitest reporter that ends every run with the suites it skipped and why, so that a missing Chromium
 * or an unavailable backend is never silent: the skip notes the suites print (`[browser test] skipped:
 * …`, `[describeEachBackend] skipping backend …`) and the number of skipped tests per file.
 */
import { relative } from 'node:path';

export default class SkipSummaryReporter {
  /** @type {Set<string>} */
  reasons = new Set();

  /** @param {{ content: string }} log */
  onUserConsoleLog(log) {
    for (const line of log.content.split('\n')) if (/\bskipp(ed|ing)\b/i.test(line)) this.reasons.add(line.trim());
  }

  /** @param {ReadonlyArray<import('vitest/node').TestModule>} testModules */
  onTestRunEnd(testModules) {
    /** @type {[string, number][]} */
    const files = [];
    for (const m of testModules) {
      let n = 0;
      for (const t of m.children.allTests()) if (t.result().state === 'skipped') n++;
      if (n) files.push([relative(process.cwd(), m.moduleId), n]);
    }
    if (!files.length && !this.reasons.size) return;
    const total = files.reduce((s, [, n]) => s + n, 0);
    const lines = [`Skipped: ${total} test(s) in ${files.length} file(s)`];
    for (const [f, n] of files) lines.push(`  ${f}: ${n}`);
    if (this.reasons.size) lines.push('Why:', ...[...this.reasons].map((r) => `  ${r}`));
    process.stdout.write(`\n${lines.join('\n')}\n`);
  }
}
