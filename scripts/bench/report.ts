// Numbers to text: percentiles, counters' deltas and the markdown tables the bench prints.
import { cpus, release } from 'node:os';
import { readFileSync } from 'node:fs';

/** The p-th percentile (0-100) by nearest rank; NaN for no samples. */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

/** `INFO commandstats` as command → calls. */
export function parseCommandStats(info: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

/** after − before, per command, dropping the bench's own INFO calls. */
export function diffCommandStats(before: Map<string, number>, after: Map<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [cmd, calls] of after) {
    const d = calls - (before.get(cmd) ?? 0);
    if (d > 0 && cmd !== 'info') out.set(cmd, d);
  }
  return out;
}

/** One line about the machine, for the table's heading. */
export function describeMachine(redisVersion: string): string {
  const model = /^model name\s*:\s*(.+)$/m.exec(safeRead('/proc/cpuinfo'))?.[1] ?? cpus()[0]?.model ?? 'unknown cpu';
  return `${model.trim()}, ${cpus().length} cores, Linux ${release()}, Node ${process.version}, redis-server ${redisVersion}`;
}

function safeRead(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** A number with `digits` decimals, or `–` when it is not a number. */
export function fmt(n: number | undefined, digits = 1): string {
  return n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(digits);
}

/** PASS/FAIL, or `–` when the measure is missing. */
export function verdict(ok: boolean | undefined): string {
  return ok === undefined ? '–' : ok ? 'PASS' : 'FAIL';
}

/** A markdown table with a header row. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
