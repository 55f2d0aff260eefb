// The bench's output: a heading that says what ran where, one markdown table with PASS/FAIL per
// target, the parts table, and the notes that explain the numbers.
import type { FastMeasure } from './fast-phase.js';
import type { PartCost } from './parts.js';
import type { ClosedLoopResult } from './load.js';
import type { BenchOptions } from './options.js';
import { describeMachine, fmt, percentile, table, verdict } from './report.js';
import type { SlowMeasure } from './slow-phase.js';

/** Everything one run measured; a phase that did not run (or failed) is missing. */
export interface BenchResults {
  fast?: FastMeasure;
  baseline?: FastMeasure;
  paced?: ClosedLoopResult;
  pacedBaseline?: ClosedLoopResult;
  slow?: SlowMeasure;
  parts?: PartCost[];
  drainedMs: number[];
  /** Share of a core used by other processes of the machine, per phase. */
  noise: Map<string, number>;
  errors: string[];
}

/** Facts about the run for the heading. */
export interface RunInfo {
  seconds: number;
  loadBefore: string;
  redisVersion: string;
  redisArgs: string[];
}

/** Prints the heading, the table and the notes. */
export function printResults(r: BenchResults, opts: BenchOptions, info: RunInfo): void {
  console.log(`\n## wechat-dify bench (${new Date().toISOString().slice(0, 19)}Z, ${info.seconds} s)\n`);
  console.log(`machine: ${describeMachine(info.redisVersion)}; load average before the run ${info.loadBefore}`);
  console.log(`redis-server ${info.redisArgs.join(' ')} (RDB snapshots: Redis defaults); LOG_LEVEL=info, NODE_ENV=production, ` +
    `plain mode, ENABLE_CUSTOM_MESSAGE=true, WORKER_CONCURRENCY=${opts.workerConcurrency}; fake Dify: chat app, ~100-char answer ` +
    'in 8-char SSE chunks, pings every 1 s');
  console.log(`fast: ${opts.followers} followers in a closed loop, ${opts.durationMs / 1000} s measured per side in ${opts.rounds} ` +
    `rounds alternating queue/relay in ABBA order (all processes up), each after a warm-up of ${opts.warmupMs / 1000} s (first round of a side) / ` +
    `${opts.roundWarmupMs / 1000} s (later rounds); paced: ${opts.pacedRate} messages/s over ` +
    `${opts.pacedFollowers} followers, ${opts.pacedMs / 1000} s after 1 s; slow: ${opts.slowFollowers} followers at once, answers ` +
    `after ${opts.slowDelayMs / 1000} s, WeChat's attempts at 0/5/10 s cut at 5 s` +
    (r.drainedMs.length ? `; waited ${r.drainedMs.map((ms) => (ms / 1000).toFixed(1)).join(', ')} s for earlier jobs to drain` : '') + '\n');
  console.log(table(['measure', 'queue (ingress + worker)', 'baseline relay', 'target', 'result'], [...fastRows(r, opts), ...slowRows(r), ...costRows(r)]));
  if (r.parts) printParts(r.parts, opts);
  notes(r);
}

function fastRows({ fast, baseline, paced, pacedBaseline }: BenchResults, opts: BenchOptions): string[][] {
  const rate = (m?: FastMeasure) => (m ? m.load.answered / (m.load.windowMs / 1000) : undefined);
  const p = (l: ClosedLoopResult | undefined, q: number) => (l ? percentile(l.latencies, q) : undefined);
  const ratio = rate(fast) !== undefined && rate(baseline) ? rate(fast)! / rate(baseline)! : undefined;
  // round k of each side ran back to back: their ratio shows how far the host drifted within the run
  const roundRatios = fast && baseline && fast.roundRates.length === baseline.roundRates.length && fast.roundRates.length > 1
    ? ` (by round: ${fast.roundRates.map((q, k) => fmt(q / baseline.roundRates[k]!, 2)).join(', ')})`
    : '';
  const paceLabel = `paced ${opts.pacedRate}/s`;
  return [
    ['fast: messages/s', fmt(rate(fast), 0), fmt(rate(baseline), 0), '≥ 0.5 × baseline', verdict(ratio === undefined ? undefined : ratio >= 0.5)],
    ['fast: queue/baseline ratio', `${fmt(ratio, 2)}${roundRatios}`, '', '', ''],
    ['fast: p50 latency (ms)', fmt(p(fast?.load, 50)), fmt(p(baseline?.load, 50)), '', ''],
    ['fast: p99 latency (ms)', fmt(p(fast?.load, 99)), fmt(p(baseline?.load, 99)), '< 50 ms', verdict(fast ? p(fast.load, 99)! < 50 : undefined)],
    ['fast: errors', String(fast?.load.errors ?? '–'), String(baseline?.load.errors ?? '–'), '0', verdict(fast ? fast.load.errors === 0 : undefined)],
    [`${paceLabel}: p50 latency (ms)`, fmt(p(paced, 50)), fmt(p(pacedBaseline, 50)), '', ''],
    [`${paceLabel}: p99 latency (ms)`, fmt(p(paced, 99)), fmt(p(pacedBaseline, 99)), '', ''],
    [`${paceLabel}: errors`, String(paced?.errors ?? '–'), String(pacedBaseline?.errors ?? '–'), '', ''],
  ];
}

function slowRows({ slow }: BenchResults): string[][] {
  const lag = (q: number) => (slow ? percentile(slow.lags, q) : undefined);
  const mem = (name: string, limit: number) => {
    const m = slow?.memory.get(name);
    const text = m ? `${fmt(m.mb, 0)} (anon ${fmt(m.anonMB, 0)} + file ${fmt(m.fileMB, 0)}; ${fmt(m.beforeMB, 0)} before)` : '–';
    return [`slow: peak RSS ${name} (MB)`, text, '', `< ${limit} MB`, verdict(m ? m.mb < limit : undefined)];
  };
  const delivered = slow
    ? `${slow.delivered}/${slow.delivered + slow.missing.length} (attempt 1/2/3: ${slow.byAttempt.join('/')}, pushed ${slow.pushed})`
    : '–';
  return [
    ['slow: answers delivered', delivered, '', 'all', verdict(slow ? slow.missing.length === 0 : undefined)],
    ['slow: lag after Dify finished p50 (ms)', fmt(lag(50)), '', '', ''],
    ['slow: lag after Dify finished p99 (ms)', fmt(lag(99)), '', '< 100 ms', verdict(slow ? lag(99)! < 100 : undefined)],
    ['slow: concurrent Dify streams (peak)', String(slow?.peakStreams ?? '–'), '', '', ''],
    ['slow: CPU ms/message worker, ingress, redis-server, fakes', slow
      ? ['worker', 'ingress', 'redis', 'fakes'].map((n) => fmt(slow.cpuPerMsg.get(n), 2)).join(', ')
      : '–', '', '', ''],
    mem('worker', 200),
    mem('ingress', 150),
  ];
}

function costRows({ fast, baseline, noise }: BenchResults): string[][] {
  const cpu = (m: FastMeasure | undefined, name: string) =>
    m?.cpuShare.has(name) ? `${fmt(m.cpuPerMsg.get(name), 2)} (${fmt(m.cpuShare.get(name)! * 100, 0)}% of a core)` : '–';
  // runnable but not running: what sharing 2 cores among five busy processes costs each of them
  const waits = (m: FastMeasure | undefined) =>
    m?.cpuWaitPerMsg.size ? [...m.cpuWaitPerMsg].map(([name, ms]) => `${name} ${fmt(ms, 2)}`).join(', ') : '–';
  const commands = fast?.commandsPerMsg ? [...fast.commandsPerMsg.values()].reduce((a, b) => a + b, 0) : undefined;
  return [
    ['cost: Redis commands/message', fmt(commands), '0', '', ''],
    ['cost: CPU ms/message ingress | relay', cpu(fast, 'ingress'), cpu(baseline, 'relay'), '', ''],
    ['cost: CPU ms/message worker', cpu(fast, 'worker'), '', '', ''],
    ['cost: CPU ms/message redis-server', cpu(fast, 'redis'), '', '', ''],
    ['cost: CPU ms/message fakes (Dify)', cpu(fast, 'fakes'), cpu(baseline, 'fakes'), '', ''],
    ['cost: CPU ms/message load generator', cpu(fast, 'loadgen'), cpu(baseline, 'loadgen'), '', ''],
    ['cost: log lines/message ingress | relay', fmt(fast?.logLinesPerMsg.get('ingress')), fmt(baseline?.logLinesPerMsg.get('relay')), '', ''],
    ['cost: log lines/message worker', fmt(fast?.logLinesPerMsg.get('worker')), '', '', ''],
    ['machine: time waiting for a CPU, ms/message', waits(fast), waits(baseline), '', ''],
    ['machine: CPU of other processes (% of a core)', [...noise].map(([k, v]) => `${k} ${fmt(v * 100, 0)}`).join(', '), '', '< 10%',
      noise.size === 0 ? '–' : [...noise.values()].every((v) => v < 0.1) ? 'quiet' : 'NOISY'],
  ];
}

/** The parts of a message, each measured alone in the bench's process; Redis parts with redis-server's share. */
function printParts(parts: PartCost[], opts: BenchOptions): void {
  console.log(`\nThe parts of one message, each measured alone in the bench's process (${opts.partsN} messages, the async ones 32 at a time), ` +
    'against the same fakes and Redis: CPU µs per message of the process that runs it, and of redis-server. Some rows contain others ' +
    '(the decode includes the signature check, the Dify call the SSE parsing): they do not add up.\n');
  console.log(table(['part', 'runs in', 'CPU µs/message', 'redis-server µs/message', 'Redis commands/message'], parts.map((p) => [
    p.part, p.runsIn, fmt(p.us, 1), fmt(p.redisUs, 1), fmt(p.redisCommands, 1),
  ])));
}

function notes(r: BenchResults): void {
  if (r.fast?.commandsPerMsg) {
    const top = [...r.fast.commandsPerMsg].slice(0, 12).map(([cmd, n]) => `${cmd} ${fmt(n, 2)}`);
    console.log(`\nRedis commands per message (INFO commandstats, commands run inside Lua scripts included): ${top.join(', ')}`);
  }
  if (r.slow?.note) console.log(`\nnote: ${r.slow.note}`);
  if (r.slow?.missing.length) console.log(`\nnot delivered: ${r.slow.missing.slice(0, 5).join('; ')}${r.slow.missing.length > 5 ? ' …' : ''}`);
  const loads = [['queue', r.fast?.load], ['relay', r.baseline?.load], ['paced queue', r.paced], ['paced relay', r.pacedBaseline]] as const;
  for (const [name, l] of loads) if (l?.firstError) console.log(`\nfirst ${name} error: ${l.firstError}`);
  for (const e of r.errors) console.log(`\nerror: ${e}`);
}
