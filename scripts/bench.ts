// `npm run bench`: the queue (ingress + worker on Redis) against a one-process relay, on the same
// fakes, in one run. Starts redis-server, the fakes, the built ingress and worker (later the relay)
// as child processes, drives them the way WeChat does, prints one markdown table, exits 0.
//
// Knobs (environment; defaults in brackets): BENCH_FOLLOWERS [32], BENCH_WARMUP_S [2],
// BENCH_QUEUE_WARMUP_S [17], BENCH_DURATION_S [15], BENCH_PACED_RATE [100 messages/s],
// BENCH_PACED_S [8], BENCH_PACED_FOLLOWERS [64], BENCH_SLOW_FOLLOWERS [300],
// BENCH_SLOW_DELAY_MS [6000], BENCH_WORKER_CONCURRENCY [300], BENCH_DRAIN_MAX_S [30; 0 = no wait],
// BENCH_PHASES [paced,slow,fast,baseline], BENCH_CPU_PROF=1 (--cpu-prof in the ingress, the
// worker and the relay; summarize with scripts/bench/profile-summary.ts), BENCH_KEEP=1 (keep logs).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { QUEUES } from '@wxdify/core';
import { WeChatSimulator } from '../packages/core/src/wechat/simulator.js';
import type { BenchContext } from './bench/context.js';
import { fastPhase } from './bench/fast-phase.js';
import { startFakes, type Fakes } from './bench/fakes-process.js';
import { Client, runClosedLoop, runPaced } from './bench/load.js';
import { readOptions } from './bench/options.js';
import { printResults, type BenchResults } from './bench/print.js';
import { cpuMs, freePort, machineBusyMs, startChild, startRedis, stopChild, waitForOk, type Child } from './bench/processes.js';
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
    if ((['paced', 'slow', 'fast'] as const).some((p) => ctx.opts.phases.has(p))) await runQueue(env, fakes, redis.child, info);
    if (ctx.opts.phases.has('baseline')) await runRelay(env, fakes);
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

/** The ingress and the worker: slow path, paced, then the closed loop with its costs. */
async function runQueue(env: NodeJS.ProcessEnv, fakes: Fakes, redis: Child, info: Redis): Promise<void> {
  const [ingressPort, workerPort] = [await freePort(), await freePort()];
  const ingress = startNode('ingress', 'apps/ingress/dist/main.js', { ...env, PORT: String(ingressPort) });
  const worker = startNode('worker', 'apps/worker/dist/main.js', { ...env, PORT: String(workerPort) });
  await waitForOk(`http://127.0.0.1:${ingressPort}/readyz`, ingress);
  await waitForOk(`http://127.0.0.1:${workerPort}/readyz`, worker);
  const simulator = wechatAt(`http://127.0.0.1:${ingressPort}/wechat`);
  const { opts } = ctx;

  // a second of traffic first, so that nothing measures a cold JIT; its settle jobs come 16.5 s later, after the slow path
  await runClosedLoop({ client: ctx.client, simulator, followers: opts.followers, openIdPrefix: 'oWarm', warmupMs: 0, durationMs: 1000, expected });
  if (opts.phases.has('slow')) results.slow = await phase('slow', () => slowPhase(ctx, simulator, fakes, [ingress, worker], expected));
  if (opts.phases.has('paced')) {
    await drainQueues(info, env.QUEUE_PREFIX!);
    results.paced = await phase('paced', () => paced(simulator, 'oPaced'));
  }
  if (opts.phases.has('fast')) {
    const procs = [ingress, worker, redis, fakes.child];
    results.fast = await phase('fast', () =>
      fastPhase(ctx, simulator, { openIdPrefix: 'oQueue', warmupMs: opts.queueWarmupMs, procs, expected, redis: info }));
  }
  await stopChild(ingress);
  await stopChild(worker);
}

/** The baseline relay on the same fakes: paced, then the closed loop. */
async function runRelay(env: NodeJS.ProcessEnv, fakes: Fakes): Promise<void> {
  const port = await freePort();
  const relay = startNode('relay', 'scripts/bench/relay.ts', { ...env, PORT: String(port) }, [...TSX, ...PRODUCTION_NODE_FLAGS]);
  await waitForOk(`http://127.0.0.1:${port}/healthz`, relay);
  const simulator = wechatAt(`http://127.0.0.1:${port}/wechat`);
  results.pacedBaseline = await phase('relay paced', () => paced(simulator, 'oRelayPaced'));
  results.baseline = await phase('relay fast', () =>
    fastPhase(ctx, simulator, { openIdPrefix: 'oRelay', warmupMs: ctx.opts.warmupMs, procs: [relay, fakes.child], expected }));
  await stopChild(relay);
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
 * Waits until no job of an earlier phase is waiting, delayed or running (each answer's settle job
 * runs 16.5 s after its message), so that one phase's leftovers do not load the next.
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
