// The bench's knobs, from the environment; the defaults are the run the performance issue asks for.

export type Phase = 'paced' | 'slow' | 'fast' | 'baseline' | 'parts';

/** Every knob of one bench run. */
export interface BenchOptions {
  /** Closed-loop followers of the fast path. */
  followers: number;
  /** Warm-up of each side's first fast round. */
  warmupMs: number;
  /**
   * Warm-up of each side's later fast rounds: min(1 s, warmupMs). The processes are warm by then
   * (they ran a round already); only the loop's ramp-up and the other side's last replies pass.
   */
  roundWarmupMs: number;
  /** Measured time of the fast path per side, over all its rounds. */
  durationMs: number;
  /**
   * Fast-path rounds per side, alternating queue, relay, queue, relay, …: each durationMs / rounds
   * long, so that the host's drift over a minute lands on both sides alike.
   */
  rounds: number;
  slowFollowers: number;
  slowDelayMs: number;
  /** The target is about 300 concurrent streams in one worker; WORKER_CONCURRENCY's default (200) would start 100 of them 6 s late. */
  workerConcurrency: number;
  pacedRate: number;
  pacedMs: number;
  pacedFollowers: number;
  /** Longest wait for an earlier phase's jobs before the next phase; 0 does not wait. */
  drainMaxMs: number;
  phases: Set<Phase>;
  /** Messages per part in the parts table (its async parts run 32 at a time). */
  partsN: number;
  /** --cpu-prof in the ingress, the worker and the relay; the profiles are kept. */
  cpuProf: boolean;
  /** Keep the temp dir (logs, AOF, slow.json, fast.json). */
  keep: boolean;
}

/** Reads BENCH_* (see scripts/bench.ts for the list). */
export function readOptions(env: NodeJS.ProcessEnv): BenchOptions {
  const num = (name: string, dflt: number, allowZero = false) => {
    const v = Number(env[name] ?? dflt);
    return Number.isFinite(v) && (v > 0 || (allowZero && v === 0)) ? v : dflt;
  };
  const warmupMs = num('BENCH_WARMUP_S', 2) * 1000;
  return {
    followers: Math.round(num('BENCH_FOLLOWERS', 32)),
    warmupMs,
    roundWarmupMs: Math.min(1000, warmupMs),
    durationMs: num('BENCH_DURATION_S', 15) * 1000,
    rounds: Math.max(1, Math.round(num('BENCH_ROUNDS', 3))),
    slowFollowers: Math.round(num('BENCH_SLOW_FOLLOWERS', 300)),
    slowDelayMs: Math.round(num('BENCH_SLOW_DELAY_MS', 6000)),
    workerConcurrency: Math.round(num('BENCH_WORKER_CONCURRENCY', 300)),
    pacedRate: num('BENCH_PACED_RATE', 100),
    pacedMs: num('BENCH_PACED_S', 8) * 1000,
    pacedFollowers: Math.round(num('BENCH_PACED_FOLLOWERS', 64)),
    drainMaxMs: num('BENCH_DRAIN_MAX_S', 30, true) * 1000,
    partsN: Math.round(num('BENCH_PARTS_N', 2000)),
    phases: new Set((env.BENCH_PHASES ?? 'paced,slow,fast,baseline,parts').split(',').map((s) => s.trim() as Phase)),
    cpuProf: env.BENCH_CPU_PROF === '1',
    keep: env.BENCH_KEEP === '1',
  };
}
