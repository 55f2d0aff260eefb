// The slow path: 300 followers at once whose answers take 6 s. The lag of each answer runs from
// the fake Dify's last event to the load generator's receipt of the reply; memory is sampled meanwhile.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { WeChatSimulator } from '../../packages/core/src/wechat/simulator.js';
import type { BenchContext } from './context.js';
import type { Fakes, FakesReport } from './fakes-process.js';
import { runWeChatAttempts } from './load.js';
import { cpuMs, resetPeakRss, rss, type Child } from './processes.js';

const MB = 1e6;

/** Peak RSS (VmHWM) of a process, the anonymous/file split of its highest sample, and its RSS before the burst (MB). */
export interface PeakMemory {
  mb: number;
  anonMB: number;
  fileMB: number;
  beforeMB: number;
}

/** What the slow path measured. */
export interface SlowMeasure {
  delivered: number;
  /** Answers carried by WeChat's attempt 1, 2 and 3. */
  byAttempt: number[];
  pushed: number;
  /** ms from Dify's last event to the follower's receipt, per delivered answer. */
  lags: number[];
  missing: string[];
  peakStreams: number;
  memory: Map<string, PeakMemory>;
  /** CPU ms per follower of each process over the phase (the burst, 6 s of pings, the answers). */
  cpuPerMsg: Map<string, number>;
  note?: string;
}

/**
 * Sends the burst, waits for every answer (passive, or pushed), and measures; `procs` are sampled
 * for memory, and they and `others` (redis-server, the fakes) for CPU.
 */
export async function slowPhase(
  ctx: BenchContext,
  simulator: WeChatSimulator,
  fakes: Fakes,
  procs: Child[],
  others: Child[],
  expected: (query: string) => string,
): Promise<SlowMeasure> {
  const watched = [...procs, ...others];
  const cpuBefore = watched.map((c) => cpuMs(c.pid));
  const memory = watchMemory(procs);
  await fakes.queueSlowAnswers(ctx.opts.slowFollowers, ctx.opts.slowDelayMs);
  const openIds = Array.from({ length: ctx.opts.slowFollowers }, (_, i) => `oSlow${String(i).padStart(4, '0')}`);
  const results = await runWeChatAttempts({ client: ctx.client, simulator, openIds, isAnswer: (body, q) => body.includes(expected(q)) });
  // answers no attempt carried are pushed (ENABLE_CUSTOM_MESSAGE=true): give the pushes a moment
  const passive = results.filter((r) => r.answeredAt !== undefined).length;
  let report = await fakes.report();
  for (let i = 0; i < 50 && passive + pushedTo(report, openIds).size < openIds.length; i++) {
    await sleep(200);
    report = await fakes.report();
  }
  const peaks = memory.stop();
  const cpuPerMsg = new Map(watched.map((c, i) => [c.name, (cpuMs(c.pid) - cpuBefore[i]!) / openIds.length]));
  if (ctx.opts.keep) writeFileSync(join(ctx.dir, 'slow.json'), JSON.stringify({ results, finishes: report.finishes, pushes: report.pushes }));

  const measure: SlowMeasure = { delivered: 0, byAttempt: [0, 0, 0], pushed: 0, lags: [], missing: [], peakStreams: report.peakStreams, memory: peaks.memory, cpuPerMsg };
  if (!peaks.resettable) measure.note = 'VmHWM could not be reset: peaks are sampled every 50 ms';
  for (const r of results) {
    const finished = report.finishes[r.openId];
    const push = report.pushes.find((p) => p.touser === r.openId && p.text.includes('Echo:'));
    const at = r.answeredAt ?? push?.at;
    if (r.answeredBy) measure.byAttempt[r.answeredBy - 1]!++;
    else if (push) measure.pushed++;
    if (at === undefined) {
      measure.missing.push(`${r.openId} (statuses ${r.statuses.join(',')}${r.other ? `, got ${r.other.slice(0, 80)}` : ''})`);
      continue;
    }
    measure.delivered++;
    if (finished !== undefined) measure.lags.push(at - finished);
  }
  return measure;
}

/** Samples RSS every 50 ms from now on, with VmHWM reset so that the kernel's own peak covers the burst. */
function watchMemory(procs: Child[]) {
  const before = new Map(procs.map((c) => [c.name, rss(c.pid).rss / MB]));
  const peak = new Map<string, ReturnType<typeof rss>>();
  const resettable = procs.every((c) => resetPeakRss(c.pid));
  const sample = () => {
    for (const c of procs) {
      const now = rss(c.pid);
      if (now.rss > (peak.get(c.name)?.rss ?? 0)) peak.set(c.name, now);
    }
  };
  const timer = setInterval(sample, 50);
  return {
    stop() {
      clearInterval(timer);
      sample();
      const memory = new Map<string, PeakMemory>();
      for (const c of procs) {
        const p = peak.get(c.name)!;
        const hwm = resettable ? rss(c.pid).hwm : 0;
        memory.set(c.name, { mb: Math.max(p.rss, hwm) / MB, anonMB: p.anon / MB, fileMB: p.file / MB, beforeMB: before.get(c.name)! });
      }
      return { memory, resettable };
    },
  };
}

function pushedTo(report: FakesReport, openIds: string[]): Set<string> {
  const ids = new Set(openIds);
  return new Set(report.pushes.filter((p) => ids.has(p.touser) && p.text.includes('Echo:')).map((p) => p.touser));
}
