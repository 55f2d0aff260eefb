// `npm run bench`: the queue (ingress + worker on Redis) against a one-process relay, on the same
// fakes, in one run. Starts redis-server, the fakes, the built ingress and worker (later the relay)
// as child processes, drives them the way WeChat does, prints a markdown table of the targets and
// one of the parts of a message (measured last, in this process), exits 0.
// Order: queue slow path, queue paced, relay paced, then the fast closed loop in rounds that
// alternate queue, relay, relay, queue, queue, relay, … with all of them up (an idle one costs next
// to nothing), so that the host's drift over the run lands on both sides of the throughput ratio alike.
//
// Knobs (environment; defaults in brackets): BENCH_FOLLOWERS [32], BENCH_WARMUP_S [2; at most 1 s
// for a side's later rounds], BENCH_DURATION_S [15, measured per side], BENCH_ROUNDS [3 per side],
// BENCH_PACED_RATE [100 messages/s], BENCH_PACED_S [8], BENCH_PACED_FOLLOWERS [64],
// BENCH_SLOW_FOLLOWERS [300], BENCH_SLOW_DELAY_MS [6000], BENCH_WORKER_CONCURRENCY [300],
// BENCH_DRAIN_MAX_S [30; 0 = no wait], BENCH_PHASES [paced,slow,fast,baseline,parts], BENCH_PARTS_N
// [2000 messages per part], BENCH_CPU_PROF=1
// (--cpu-prof in the ingress, the worker and the relay; summarize with
// scripts/bench/profile-summary.ts), BENCH_KEEP=1 (keep logs, slow.json and fast.json with every
// latency measured, and the Redis data that scripts/bench/hops.ts splits into hops).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { QUEUES } from '@wxdify/core';
import { WeChatSimulator } from '../packages/core/src/wechat/simulator.js';
import type { BenchContext } from './bench/context.js';
import { fastRound, mergeRounds, type FastRound } from './bench/fast-phase.js';
import { startFakes, type Fakes } from './bench/fakes-process.js';
import { Client, runClosedLoop, runPaced } from './bench/load.js';
import { readOptions } from './bench/options.js';
import { printResults, type BenchResults } from './bench/print.js';
import { cpuMs, freePort, machineBusyMs, startChild, startRedis, stopChild, waitForOk, type Child } from './bench/processes.js';
import { measureParts } from './bench/parts.js';
import { slowPhase } from './bench/slow-phase.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
/** tsx's loader for the children written in TypeScript (the fakes, the relay), wherever the bench is started from. */
const TSX = ['--import', import.meta.resolve('tsx')];
/** The V8 flag the production entries run with (package.json start:* scripts, the Dockerfile's NODE_OPTIONS); the relay gets it too. */
const PRODUCTION_NODE_FLAGS = ['--max-semi-space-size=4'];
const TOKEN = 'benchtoken';
const APP_ID = 'wxbench0000000001';
const AES_KEY = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG';
/** What the fake Dify answers to `content` starts with (scripts/bench/fakes.ts). */
const expected = (content: string) => `Echo: ${content}.`;

const ctx: BenchContext = { opts: readOptions(process.env), dir: mkdtempSync(join(tmpdir(), 'wxdify-bench-')), client: new Client() };
const children: Child[] = [];
const results: BenchResults = { drainedMs: [], noise: new Map(), errors: [] };
const started = Date.now();
const loadBefore = loadavg().map((l) => l.toFixed(2)).join(' ');
const redisInfo = { version: '?', args: [] as string[] };

/** One side of the fast-path comparison: where its followers send, and what its rounds measured. */
interface FastSide {
  label: 'queue' | 'relay';
  openIdPrefix: string;
  simulator: WeChatSimulator;
  /** The processes whose cost is counted. */
  procs: Child[];
  /** The Redis server whose commands are counted (the queue's). */
  redis?: Redis;
  rounds: FastRound[];
  failed: boolean;
}

try {
  await run();
} catch (err) {
  results.errors.push(`bench aborted: ${(err as Error).stack ?? String(err)}`);
} finally {
  ctx.client.close();
  await Promise.all(children.map((c) => stopChild(c)));
}
printResults(results, ctx.opts, {
  seconds: Math.round((Date.now() - started) / 1000), loadBefore, redisVersion: redisInfo.version, redisArgs: redisInfo.args,
});
if (ctx.opts.keep || ctx.opts.cpuProf) console.log(`\nlogs${ctx.opts.cpuProf ? ' and CPU profiles' : ''} kept in ${ctx.dir}`);
else rmSync(ctx.dir, { recursive: true, force: true });
process.exit(0);

async function run(): Promise<void> {
  const fakes = await startFakes(join(ROOT, 'scripts/bench/fakes.ts'), TSX, ctx.dir, children);
  const redis = await startRedis(ctx.dir);
  children.push(redis.child);
  const info = new Redis(redis.url, { maxRetriesPerRequest: 1 });
  try {
    redisInfo.version = /redis_version:(\S+)/.exec(await info.info('server'))?.[1] ?? '?';
    redisInfo.args = redis.args;
    const env = serviceEnv(redis.url, fakes);
    const queue = (['paced', 'slow', 'fast'] as const).some((p) => ctx.opts.phases.has(p))
      ? await runQueue(env, fakes, redis.child, info)
      : undefined;
    // a relay that does not start costs the baseline only, not the queue's fast rounds
    const relay = ctx.opts.phases.has('baseline')
      ? await runRelay(env, fakes).catch((err: unknown) => void results.errors.push(`relay: ${(err as Error).stack ?? String(err)}`))
      : undefined;
    const sides = [queue, relay].filter((s): s is FastSide => s !== undefined);
    if (sides.length) await phase('fast', () => fastRounds(sides));
    if (queue) results.fast = merged(queue);
    if (relay) results.baseline = merged(relay);
    // every fast-path latency (ms), for the distribution behind p50 and p99
    if (ctx.opts.keep) writeFileSync(join(ctx.dir, 'fast.json'), JSON.stringify({ queue: results.fast?.load.latencies, relay: results.baseline?.load.latencies }));
    // last, with every service idle: the parts of a message, one at a time, in this process
    if (ctx.opts.phases.has('parts')) {
      results.parts = await phase('parts', () => measureParts({
        account: { appId: APP_ID, token: TOKEN, encodingAesKey: AES_KEY },
        difyBaseUrl: fakes.ready.difyBaseUrl, difyApiKey: fakes.ready.difyApiKey, redisUrl: redis.url, redisPid: redis.child.pid,
        dir: ctx.dir, n: ctx.opts.partsN,
      }));
    }
  } finally {
    info.disconnect();
  }
}

/** The production configuration, pointed at the fakes (only PORT differs between the processes). */
function serviceEnv(redisUrl: string, fakes: Fakes): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    NODE_ENV: 'production',
    HOST: '127.0.0.1',
    REDIS_URL: redisUrl,
    QUEUE_PREFIX: `bench-${randomBytes(4).toString('hex')}`,
    LOG_LEVEL: 'info',
    WECHAT_APP_ID: APP_ID,
    WECHAT_TOKEN: TOKEN,
    WECHAT_ENCODING_AES_KEY: AES_KEY,
    WECHAT_APP_SECRET: 'bench-secret',
    WECHAT_API_BASE_URL: fakes.ready.wechatUrl,
    DIFY_API_BASE_URL: fakes.ready.difyBaseUrl,
    DIFY_API_KEY: fakes.ready.difyApiKey,
    DIFY_APP_TYPE: 'chat',
    ENABLE_CUSTOM_MESSAGE: 'true',
    WORKER_CONCURRENCY: String(ctx.opts.workerConcurrency),
  };
}

/** Starts the ingress and the worker (left running) and measures the slow path and paced; returns the fast side, if it runs. */
async function runQueue(env: NodeJS.ProcessEnv, fakes: Fakes, redis: Child, info: Redis): Promise<FastSide | undefined> {
  const [ingressPort, workerPort] = [await freePort(), await freePort()];
  const ingress = startNode('ingress', 'apps/ingress/dist/main.js', { ...env, PORT: String(ingressPort) });
  const worker = startNode('worker', 'apps/worker/dist/main.js', { ...env, PORT: String(workerPort) });
  await waitForOk(`http://127.0.0.1:${ingressPort}/readyz`, ingress);
  await waitForOk(`http://127.0.0.1:${workerPort}/readyz`, worker);
  const simulator = wechatAt(`http://127.0.0.1:${ingressPort}/wechat`);
  const { opts } = ctx;

  // a second of traffic first, so that nothing measures a cold JIT
  await runClosedLoop({ client: ctx.client, simulator, followers: opts.followers, openIdPrefix: 'oWarm', warmupMs: 0, durationMs: 1000, expected });
  if (opts.phases.has('slow')) results.slow = await phase('slow', () => slowPhase(ctx, simulator, fakes, [ingress, worker], [redis, fakes.child], expected));
  if (opts.phases.has('paced')) {
    await drainQueues(info, env.QUEUE_PREFIX!);
    results.paced = await phase('paced', () => paced(simulator, 'oPaced'));
  }
  if (!opts.phases.has('fast')) return undefined;
  return { label: 'queue', openIdPrefix: 'oQueue', simulator, procs: [ingress, worker, redis, fakes.child], redis: info, rounds: [], failed: false };
}

/** Starts the baseline relay on the same fakes (left running) and measures paced; returns its fast side. */
async function runRelay(env: NodeJS.ProcessEnv, fakes: Fakes): Promise<FastSide> {
  const port = await freePort();
  const relay = startNode('relay', 'scripts/bench/relay.ts', { ...env, PORT: String(port) }, [...TSX, ...PRODUCTION_NODE_FLAGS]);
  await waitForOk(`http://127.0.0.1:${port}/healthz`, relay);
  const simulator = wechatAt(`http://127.0.0.1:${port}/wechat`);
  results.pacedBaseline = await phase('relay paced', () => paced(simulator, 'oRelayPaced'));
  return { label: 'relay', openIdPrefix: 'oRelay', simulator, procs: [relay, fakes.child], rounds: [], failed: false };
}

/**
 * The fast closed loop in rounds, in ABBA order (queue 1, relay 1, relay 2, queue 2, queue 3,
 * relay 3, …) so that a steady drift of the host favours neither side. Each round is
 * durationMs / rounds long and has its own OpenIDs (`oQueue2-0007`), so no message id repeats.
 * The first round of a side warms up for warmupMs; its later ones for roundWarmupMs (≤ 1 s): the
 * processes are warm by then, only the loop's ramp-up and the other side's last replies pass.
 * A side whose round fails runs no more rounds and reports nothing (partial rounds would skew it).
 */
async function fastRounds(sides: FastSide[]): Promise<void> {
  const { opts } = ctx;
  for (let k = 1; k <= opts.rounds; k++) {
    for (const side of k % 2 === 1 ? sides : [...sides].reverse()) {
      if (side.failed) continue;
      try {
        side.rounds.push(await fastRound(ctx, side.simulator, {
          openIdPrefix: `${side.openIdPrefix}${k}-`, warmupMs: k === 1 ? opts.warmupMs : opts.roundWarmupMs,
          durationMs: opts.durationMs / opts.rounds, procs: side.procs, expected, redis: side.redis,
        }));
      } catch (err) {
        side.failed = true;
        results.errors.push(`${side.label} fast round ${k}: ${(err as Error).stack ?? String(err)}`);
      }
    }
  }
}

function merged(side: FastSide) {
  return side.failed || side.rounds.length === 0 ? undefined : mergeRounds(side.rounds);
}

function paced(simulator: WeChatSimulator, openIdPrefix: string) {
  const { opts } = ctx;
  return runPaced({
    client: ctx.client, simulator, ratePerS: opts.pacedRate, followers: opts.pacedFollowers, openIdPrefix, warmupMs: 1000,
    durationMs: opts.pacedMs, expected,
  });
}

/** Runs one phase; a failure becomes an error line. Notes how much CPU other processes of the machine used meanwhile. */
async function phase<T>(name: string, fn: () => Promise<T>): Promise<T | undefined> {
  const ours = () => children.reduce((sum, c) => sum + (c.process.exitCode === null ? safeCpuMs(c.pid) : 0), 0) + selfCpuMs();
  const before = machineBusyMs() - ours();
  const startedAt = Date.now();
  try {
    return await fn();
  } catch (err) {
    results.errors.push(`${name}: ${(err as Error).stack ?? String(err)}`);
    return undefined;
  } finally {
    results.noise.set(name, Math.max(0, machineBusyMs() - ours() - before) / (Date.now() - startedAt));
  }
}

/**
 * Waits until no job of an earlier phase is waiting, delayed or running (the slow path's pushes,
 * retries), so that one phase's leftovers do not load the next.
 */
async function drainQueues(connection: Redis, prefix: string): Promise<void> {
  const queues = Object.values(QUEUES).map((name) => new Queue(name, { connection: connection as never, prefix }));
  const startedAt = Date.now();
  try {
    while (Date.now() - startedAt < ctx.opts.drainMaxMs) {
      const counts = await Promise.all(queues.map((q) => q.getJobCounts('waiting', 'delayed', 'active', 'prioritized')));
      if (counts.every((c) => Object.values(c).every((n) => n === 0))) break;
      await sleep(200);
    }
  } finally {
    results.drainedMs.push(Date.now() - startedAt);
    await Promise.all(queues.map((q) => q.close()));
  }
}

function startNode(name: string, entry: string, env: NodeJS.ProcessEnv, nodeArgs: string[] = PRODUCTION_NODE_FLAGS): Child {
  const prof = ctx.opts.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${join(ctx.dir, 'profiles')}`, `--cpu-prof-name=${name}.cpuprofile`] : [];
  const child = startChild(name, process.execPath, [...prof, ...nodeArgs, join(ROOT, entry)], { dir: ctx.dir, env });
  children.push(child);
  return child;
}

function wechatAt(url: string): WeChatSimulator {
  return new WeChatSimulator({ url, token: TOKEN, appId: APP_ID, encodingAesKey: AES_KEY, mode: 'plain' });
}

function safeCpuMs(pid: number): number {
  try {
    return cpuMs(pid);
  } catch {
    return 0; // exited meanwhile
  }
}

function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}
