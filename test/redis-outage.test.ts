import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { WeChatSimulator } from '../packages/core/src/wechat/simulator.js';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { simulatorFor, startProcess, waitForReady, type ServiceProcess } from './helpers/processes.js';
import { freePort, startRedisServer, type RedisServer } from './helpers/redis-server.js';
import { testEnv, uniquePrefix } from './helpers/stack.js';

// Redis goes away under a running ingress and worker (real processes, real redis-server) and
// comes back on the same port and data directory: the processes say so on /readyz, stay alive,
// answer WeChat quickly instead of hanging, and recover by themselves.

let msgSeq = 7_300_000_000_000_000_000n;
const nextMsgId = () => String(msgSeq++);
/** Redis AOF on, so a restart on the same directory is a real restart, not a fresh server. */
const PERSISTENT = ['--appendonly', 'yes', '--appendfsync', 'always'];

describe('a Redis outage under running processes', () => {
  let dify: FakeDify;
  let dir: string;
  let port: number;
  let redis: RedisServer | undefined;
  const procs: ServiceProcess[] = [];

  const start = async (kind: 'ingress' | 'worker', prefix: string, extra: Record<string, string> = {}) => {
    const env = testEnv({ dify, overrides: { REDIS_URL: `redis://127.0.0.1:${port}`, QUEUE_PREFIX: prefix, LOG_LEVEL: 'warn', ...extra } });
    const proc = await startProcess(kind, env);
    procs.push(proc);
    return proc;
  };
  const redisUp = async () => {
    redis = await startRedisServer({ port, dir, args: PERSISTENT });
  };
  const redisDown = async (signal: NodeJS.Signals) => {
    const child = redis!.process;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await exited;
    redis = undefined;
  };

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', answer: (q) => `Echo: ${q}` });
  });
  afterEach(async () => {
    await Promise.all(procs.splice(0).map((p) => p.kill()));
    if (redis) await redisDown('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  });
  afterAll(async () => {
    await dify.close();
  });

  it('reports not ready, stays alive, fails WeChat fast and recovers by itself', async () => {
    dir = mkdtempSync(join(tmpdir(), 'wxdify-outage-'));
    port = await freePort();
    await redisUp();
    const prefix = uniquePrefix();
    const ingress = await start('ingress', prefix);
    const worker = await start('worker', prefix);
    await Promise.all([waitForReady(ingress.url, 200), waitForReady(worker.url, 200)]);
    const sim = simulatorFor(ingress);
    const before = await sim.attempt(sim.messageXml('o_outage', { MsgType: 'text', Content: 'before', MsgId: nextMsgId() }));
    expect(before.reply?.Content).toBe('Echo: before');

    await redisDown('SIGKILL');
    const downAt = Date.now();
    await Promise.all([waitForReady(ingress.url, 503, 5000), waitForReady(worker.url, 503, 5000)]);
    expect(Date.now() - downAt).toBeLessThan(5000);

    // A WeChat attempt during the outage: a quick failure (WeChat retries), never a 5 s hang.
    for (const content of ['during', 'still during']) {
      const during = await sim.attempt(sim.messageXml('o_outage', { MsgType: 'text', Content: content, MsgId: nextMsgId() }));
      expect(during.status).not.toBe(200);
      expect(during.status).not.toBe(0);
      expect(during.ms).toBeLessThan(1000);
      await sleep(2500); // the clients are in their reconnect back-off by now
    }
    for (const proc of [ingress, worker]) {
      expect(await fetch(`${proc.url}/healthz`).then((r) => r.status)).toBe(200);
      expect(await fetch(`${proc.url}/readyz`).then((r) => r.status)).toBe(503);
      expect(proc.child.exitCode).toBeNull();
    }

    await redisUp();
    const upAt = Date.now();
    await Promise.all([waitForReady(ingress.url, 200, 10_000), waitForReady(worker.url, 200, 10_000)]);
    const recoveredMs = Date.now() - upAt;
    expect(recoveredMs).toBeLessThan(10_000);

    const after = await sim.deliver(sim.messageXml('o_outage', { MsgType: 'text', Content: 'after', MsgId: nextMsgId() }));
    expect(after.accepted?.reply?.Content).toBe('Echo: after');
    expect(dify.runRequests().filter((r) => (r.body as { query: string }).query === 'after')).toHaveLength(1);
    await expectQuickAnswer(sim, 'o_outage', 'and again');
    for (const proc of [ingress, worker]) {
      expect(proc.child.exitCode).toBeNull();
      expect(crashLines(await proc.flushedLogs())).toEqual([]);
    }
  });

  it('starts while Redis is down, not ready, and becomes ready when Redis comes up', async () => {
    dir = mkdtempSync(join(tmpdir(), 'wxdify-outage-'));
    port = await freePort();
    const prefix = uniquePrefix();
    // Nothing listens on `port` yet: both processes must still start and answer /healthz.
    const ingress = await start('ingress', prefix);
    const worker = await start('worker', prefix);
    for (const proc of [ingress, worker]) {
      expect(await fetch(`${proc.url}/healthz`).then((r) => r.status)).toBe(200);
      expect(await fetch(`${proc.url}/readyz`).then((r) => r.status)).toBe(503);
    }
    const sim = simulatorFor(ingress);
    const down = await sim.attempt(sim.messageXml('o_cold', { MsgType: 'text', Content: 'too early', MsgId: nextMsgId() }));
    expect(down.status).not.toBe(200);
    expect(down.ms).toBeLessThan(1000);
    await sleep(1000);
    expect(ingress.child.exitCode).toBeNull();
    expect(worker.child.exitCode).toBeNull();

    await redisUp();
    await Promise.all([waitForReady(ingress.url, 200, 10_000), waitForReady(worker.url, 200, 10_000)]);
    const result = await sim.deliver(sim.messageXml('o_cold', { MsgType: 'text', Content: 'now', MsgId: nextMsgId() }));
    expect(result.accepted?.reply?.Content).toBe('Echo: now');
    await expectQuickAnswer(sim, 'o_cold', 'and again');
    for (const proc of [ingress, worker]) expect(crashLines(await proc.flushedLogs())).toEqual([]);
  });

  it('stops on SIGTERM within its deadline even while Redis is down', async () => {
    dir = mkdtempSync(join(tmpdir(), 'wxdify-outage-'));
    port = await freePort();
    const prefix = uniquePrefix();
    const ingress = await start('ingress', prefix, { LOG_LEVEL: 'info' });
    const worker = await start('worker', prefix, { SHUTDOWN_GRACE_MS: '1000' });
    const started = Date.now();
    const [ingressCode, workerCode] = await Promise.all([ingress.stop(), worker.stop()]);
    // Ingress: WeChat's 5 s + 4 s; worker: SHUTDOWN_GRACE_MS (1 s here) + 10 s; both exit 0, not killed.
    expect([ingressCode, workerCode]).toEqual([0, 0]);
    expect(Date.now() - started).toBeLessThan(12_500);
    expect(ingress.logs.some((l) => l.includes('exiting') || l.includes('"stopped"'))).toBe(true);
  }, 30_000);
});

/**
 * Once recovered, an answer comes back on the first attempt as soon as it exists: the worker's
 * blocking connection and the ingress's QueueEvents are back, not just the ingress's 1 s re-check.
 */
async function expectQuickAnswer(sim: WeChatSimulator, openId: string, content: string): Promise<void> {
  const result = await sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: content, MsgId: nextMsgId() }));
  expect(result).toMatchObject({ status: 200, reply: { Content: `Echo: ${content}` } });
  expect(result.ms).toBeLessThan(800);
}

/** Lines that are not pino JSON (stack traces of a crash) or that pino logged as fatal. */
function crashLines(logs: string[]): string[] {
  return logs.filter((line) => {
    try {
      return (JSON.parse(line) as { level: number }).level >= 60;
    } catch {
      return true;
    }
  });
}
