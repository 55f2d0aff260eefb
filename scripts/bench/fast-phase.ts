// The fast path: followers in a closed loop against the queue or the relay, with the cost of each
// message (CPU per process, Redis commands, log lines) counted over exactly the measuring window.
import { readFileSync, statSync } from 'node:fs';
import type { Redis } from 'ioredis';
import type { WeChatSimulator } from '../../packages/core/src/wechat/simulator.js';
import type { BenchContext } from './context.js';
import { runClosedLoop, type ClosedLoopResult } from './load.js';
import { cpuMs, type Child } from './processes.js';
import { diffCommandStats, parseCommandStats } from './report.js';

/** What one fast-path run measured. */
export interface FastMeasure {
  load: ClosedLoopResult;
  /** CPU ms per answered message, by process name (`loadgen` is the bench itself). */
  cpuPerMsg: Map<string, number>;
  /** CPU share of one core over the window, by process name. */
  cpuShare: Map<string, number>;
  logLinesPerMsg: Map<string, number>;
  /** Redis commands per message by command, most frequent first (when `redis` was given). */
  commandsPerMsg?: Map<string, number>;
}

/** Counters read at the start and the end of the measuring window. */
interface Snapshot {
  cpu: Map<string, number>;
  self: NodeJS.CpuUsage;
  logBytes: Map<string, number>;
  commands?: Promise<Map<string, number>>;
}

/** Runs the closed loop; `procs` are the processes whose cost is counted, `redis` the server whose commands are. */
export async function fastPhase(
  ctx: BenchContext,
  simulator: WeChatSimulator,
  run: { openIdPrefix: string; warmupMs: number; procs: Child[]; expected: (query: string) => string; redis?: Redis },
): Promise<FastMeasure> {
  const snap = (): Snapshot => ({
    cpu: new Map(run.procs.map((c) => [c.name, cpuMs(c.pid)])),
    self: process.cpuUsage(),
    logBytes: new Map(run.procs.map((c) => [c.name, statSync(c.logFile).size])),
    commands: run.redis?.info('commandstats').then(parseCommandStats),
  });
  let begin: Snapshot | undefined;
  let end: Snapshot | undefined;
  const load = await runClosedLoop({
    client: ctx.client, simulator, followers: ctx.opts.followers, openIdPrefix: run.openIdPrefix, warmupMs: run.warmupMs,
    durationMs: ctx.opts.durationMs, expected: run.expected,
    onWindow: { start: () => { begin = snap(); }, end: () => { end = snap(); } },
  });
  if (!begin || !end) throw new Error('measuring window never closed');
  return { load, ...await costs(run.procs, begin, end, load) };
}

async function costs(procs: Child[], begin: Snapshot, end: Snapshot, load: ClosedLoopResult): Promise<Omit<FastMeasure, 'load'>> {
  const n = Math.max(1, load.answered);
  const cpuPerMsg = new Map<string, number>();
  const cpuShare = new Map<string, number>();
  const add = (name: string, ms: number) => {
    cpuPerMsg.set(name, ms / n);
    cpuShare.set(name, ms / load.windowMs);
  };
  for (const c of procs) add(c.name, end.cpu.get(c.name)! - begin.cpu.get(c.name)!);
  add('loadgen', (end.self.user + end.self.system - begin.self.user - begin.self.system) / 1000);
  const logLinesPerMsg = new Map<string, number>();
  for (const c of procs) {
    if (c.name === 'redis' || c.name === 'fakes') continue;
    logLinesPerMsg.set(c.name, countLines(c.logFile, begin.logBytes.get(c.name)!, end.logBytes.get(c.name)!) / n);
  }
  if (!begin.commands || !end.commands) return { cpuPerMsg, cpuShare, logLinesPerMsg };
  const diff = diffCommandStats(await begin.commands, await end.commands);
  const commandsPerMsg = new Map([...diff].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v / n]));
  return { cpuPerMsg, cpuShare, logLinesPerMsg, commandsPerMsg };
}

function countLines(file: string, from: number, to: number): number {
  if (to <= from) return 0;
  let n = 0;
  for (const byte of readFileSync(file).subarray(from, to)) if (byte === 10) n++;
  return n;
}
