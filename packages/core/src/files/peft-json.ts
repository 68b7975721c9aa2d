/**
 * JSON as PEFT writes `adapter_config.json` (Python's `json.dumps(config, indent=2, sort_keys=True)`):
 * keys sorted at every depth, two-space indent, and floats in Python's spelling (`2.0`, `1e-05`) where
 * a field is a float in PEFT's dataclass, so that those fields come out byte for byte as PEFT's.
 */

/** A number Python holds as a float: written `2.0` rather than `2`. */
export class PythonFloat {
  constructor(readonly value: number) {}
}

/** Marks a number as one Python writes as a float. */
export function pythonFloat(value: number): PythonFloat {
  return new PythonFloat(value);
}

/** Python's `repr` of a float: the shortest round-trip digits, `.0` on integers, an exponent below 1e-4 or from 1e16. */
function floatText(v: number): string {
  if (!Number.isFinite(v)) return Number.isNaN(v) ? 'NaN' : v > 0 ? 'Infinity' : '-Infinity';
  const abs = Math.abs(v);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e16)) {
    const [mantissa, exp] = v.toExponential().split('e') as [string, string];
    const sign = exp.startsWith('-') ? '-' : '+';
    const digits = exp.replace(/^[+-]/, '').padStart(2, '0');
    return `${mantissa}e${sign}${digits}`;
  }
  return Number.isInteger(v) ? `${v.toFixed(0)}.0` : String(v);
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object' && !(v instanceof PythonFloat))
    return Object.fromEntries(
      Object.keys(v as object)
        .sort()
        .map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]),
    );
  return v;
}

/** `value` as PEFT's JSON: what JSON.stringify(sorted, null, 2) gives, with {@link PythonFloat}s in Python's spelling. */
export function peftJson(value: unknown): string {
  const floats: string[] = [];
  // a float becomes a unique placeholder string, replaced by its text after stringify
  const text = JSON.stringify(
    sortKeys(value),
    (_k, v) => {
      if (!(v instanceof PythonFloat)) return v;
      floats.push(floatText(v.value));
      return `\u0000pyfloat${floats.length - 1}\u0000`;
    },
    2,
  );
  return text.replace(/"\\u0000pyfloat(\d+)\\u0000"/g, (_m, i: string) => floats[Number(i)] as string);
}
