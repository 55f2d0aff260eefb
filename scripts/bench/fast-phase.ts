// The fast path: followers in a closed loop against the queue or the relay, with the cost of each
// message (CPU per process, Redis commands, log lines) counted over exactly the measuring window.
// It runs in rounds that alternate between the queue and the relay (scripts/bench.ts): each round
// returns raw sums (fastRound), and mergeRounds turns one side's rounds into one FastMeasure.
import { readFileSync, statSync } from 'node:fs';
import type { Redis } from 'ioredis';
import type { WeChatSimulator } from '../../packages/core/src/wechat/simulator.js';
import type { BenchContext } from './context.js';
import { mergeLoads, runClosedLoop, type ClosedLoopResult } from './load.js';
import { cpuMs, cpuWaitMs, type Child } from './processes.js';
import { diffCommandStats, parseCommandStats } from './report.js';

/** What one side's fast path measured (its rounds merged). */
export interface FastMeasure {
  load: ClosedLoopResult;
  /** Messages/s of each round, in the order they ran (round k of both sides ran back to back). */
  roundRates: number[];
  /** CPU ms per answered message, by process name (`loadgen` is the bench itself). */
  cpuPerMsg: Map<string, number>;
  /** CPU share of one core over the window, by process name. */
  cpuShare: Map<string, number>;
  /** Ms per answered message that each process's threads spent runnable but waiting for a CPU (where Linux tells). */
  cpuWaitPerMsg: Map<string, number>;
  logLinesPerMsg: Map<string, number>;
  /** Redis commands per message by command, most frequent first (when `redis` was given). */
  commandsPerMsg?: Map<string, number>;
}

/** What one round counted inside its measuring window: totals, not yet divided by messages. */
export interface FastRound {
  load: ClosedLoopResult;
  /** CPU ms by process name (`loadgen` is the bench itself). */
  cpuMs: Map<string, number>;
  /** Ms runnable but waiting for a CPU, by process name (those Linux tells it for). */
  cpuWaitMs: Map<string, number>;
  logLines: Map<string, number>;
  /** Redis commands by command (when `redis` was given). */
  commands?: Map<string, number>;
}

/** Counters read at the start and the end of the measuring window. */
interface Snapshot {
  cpu: Map<string, number>;
  wait: Map<string, number | undefined>;
  self: NodeJS.CpuUsage;
  logBytes: Map<string, number>;
  commands?: Promise<Map<string, number>>;
}

/** Runs one round of the closed loop; `procs` are the processes whose cost is counted, `redis` the server whose commands are. */
export async function fastRound(
  ctx: BenchContext,
  simulator: WeChatSimulator,
  run: {
    openIdPrefix: string;
    warmupMs: number;
    durationMs: number;
    procs: Child[];
    expected: (query: string) => string;
    redis?: Redis;
  },
): Promise<FastRound> {
  const snap = (): Snapshot => ({
    cpu: new Map(run.procs.map((c) => [c.name, cpuMs(c.pid)])),
    wait: new Map([...run.procs.map((c) => [c.name, cpuWaitMs(c.pid)] as const), ['loadgen', cpuWaitMs(process.pid)]]),
    self: process.cpuUsage(),
    logBytes: new Map(run.procs.map((c) => [c.name, statSync(c.logFile).size])),
    commands: run.redis?.info('commandstats').then(parseCommandStats),
  });
  let begin: Snapshot | undefined;
  let end: Snapshot | undefined;
  const load = await runClosedLoop({
    client: ctx.client, simulator, followers: ctx.opts.followers, openIdPrefix: run.openIdPrefix, warmupMs: run.warmupMs,
    durationMs: run.durationMs, expected: run.expected,
    onWindow: { start: () => { begin = snap(); }, end: () => { end = snap(); } },
  });
  if (!begin || !end) throw new Error('measuring window never closed');
  return { load, ...await totals(run.procs, begin, end) };
}

async function totals(procs: Child[], begin: Snapshot, end: Snapshot): Promise<Omit<FastRound, 'load'>> {
  const cpu = new Map<string, number>();
  for (const c of procs) cpu.set(c.name, end.cpu.get(c.name)! - begin.cpu.get(c.name)!);
  cpu.set('loadgen', (end.self.user + end.self.system - begin.self.user - begin.self.system) / 1000);
  const cpuWait = new Map<string, number>();
  for (const [name, at] of end.wait) {
    const from = begin.wait.get(name);
    if (at !== undefined && from !== undefined) cpuWait.set(name, at - from);
  }
  const logLines = new Map<string, number>();
  for (const c of procs) {
    if (c.name === 'redis' || c.name === 'fakes') continue;
    logLines.set(c.name, countLines(c.logFile, begin.logBytes.get(c.name)!, end.logBytes.get(c.name)!));
  }
  if (!begin.commands || !end.commands) return { cpuMs: cpu, cpuWaitMs: cpuWait, logLines };
  return { cpuMs: cpu, cpuWaitMs: cpuWait, logLines, commands: diffCommandStats(await begin.commands, await end.commands) };
}

/** One side's rounds as one measurement: counts and windows summed, latencies concatenated, costs per message of the sum. */
export function mergeRounds(rounds: FastRound[]): FastMeasure {
  const load = mergeLoads(rounds.map((r) => r.load));
  const n = Math.max(1, load.answered);
  const sum = (pick: (r: FastRound) => Map<string, number> | undefined) => {
    const total = new Map<string, number>();
    for (const r of rounds) for (const [k, v] of pick(r) ?? []) total.set(k, (total.get(k) ?? 0) + v);
    return total;
  };
  const perMsg = (m: Map<string, number>) => new Map([...m].map(([k, v]) => [k, v / n]));
  const cpu = sum((r) => r.cpuMs);
  const measure: FastMeasure = {
    load,
    roundRates: rounds.map((r) => r.load.answered / (r.load.windowMs / 1000)),
    cpuPerMsg: perMsg(cpu),
    cpuShare: new Map([...cpu].map(([k, v]) => [k, v / load.windowMs])),
    cpuWaitPerMsg: perMsg(sum((r) => r.cpuWaitMs)),
    logLinesPerMsg: perMsg(sum((r) => r.logLines)),
  };
  if (rounds.every((r) => r.commands)) measure.commandsPerMsg = perMsg(new Map([...sum((r) => r.commands)].sort((a, b) => b[1] - a[1])));
  return measure;
}

function countLines(file: string, from: number, to: number): number {
  if (to <= from) return 0;
  let n = 0;
  for (const byte of readFileSync(file).subarray(from, to)) if (byte === 10) n++;
  return n;
}
