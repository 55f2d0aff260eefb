import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QUEUES } from '../packages/core/src/index.js';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { simulatorFor, startProcess, waitForReady, type ServiceProcess } from './helpers/processes.js';
import { freePort, startRedisServer, type RedisServer } from './helpers/redis-server.js';
import { testEnv, uniquePrefix } from './helpers/stack.js';

// Jobs that no worker has taken yet live only in Redis. With persistence on (AOF, fsync on every
// write so the test does not depend on a timer), they survive a Redis restart on the same data
// directory and are answered once a worker comes, each with exactly one Dify call.

let msgSeq = 7_400_000_000_000_000_000n;
const nextMsgId = () => String(msgSeq++);
const WINDOW_MS = 1000;
const FOLLOWERS = ['o_restart_a', 'o_restart_b', 'o_restart_c'];

describe('queued jobs across a Redis restart', () => {
  let dify: FakeDify;
  let dir: string;
  let port: number;
  let redis: RedisServer | undefined;
  let ingress: ServiceProcess | undefined;
  let worker: ServiceProcess | undefined;

  const redisUp = async () => {
    redis = await startRedisServer({ port, dir, args: ['--appendonly', 'yes', '--appendfsync', 'always'] });
  };

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', answer: (q) => `Echo: ${q}` });
    dir = mkdtempSync(join(tmpdir(), 'wxdify-restart-'));
    port = await freePort();
    await redisUp();
  });
  afterAll(async () => {
    await Promise.all([ingress?.kill(), worker?.kill()]);
    await redis?.stop();
    await dify.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers every message queued before the restart, with one Dify call each', async () => {
    const prefix = uniquePrefix();
    const env = testEnv({
      dify,
      overrides: { REDIS_URL: `redis://127.0.0.1:${port}`, QUEUE_PREFIX: prefix, WECHAT_TIMEOUT_MS: String(WINDOW_MS), LOG_LEVEL: 'warn' },
    });
    ingress = await startProcess('ingress', env);
    await waitForReady(ingress.url, 200);
    const sim = simulatorFor(ingress);

    // No worker: all three of WeChat's attempts time out and the last one leaves the answer for `1`.
    const deliveries = await Promise.all(
      FOLLOWERS.map((openId) => sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: `queued for ${openId}`, MsgId: nextMsgId() }), WINDOW_MS)),
    );
    for (const d of deliveries) {
      expect(d.attempts.map((a) => a.status)).toEqual([503, 503, 200]);
      expect(d.accepted?.reply?.Content).not.toMatch(/^Echo/);
    }
    expect(await countJobs(port, prefix)).toMatchObject({ waiting: FOLLOWERS.length, completed: 0 });

    // SIGTERM: Redis flushes and exits; then it starts again on the same port and directory.
    const exited = new Promise((resolve) => redis!.process.once('exit', resolve));
    redis!.process.kill('SIGTERM');
    await exited;
    await waitForReady(ingress.url, 503, 5000);
    await redisUp();
    await waitForReady(ingress.url, 200, 10_000);
    expect(await countJobs(port, prefix)).toMatchObject({ waiting: FOLLOWERS.length, completed: 0 });
    expect(dify.runRequests()).toHaveLength(0);

    worker = await startProcess('worker', env);
    await waitForReady(worker.url, 200);
    for (let i = 0; i < 100 && ((await countJobs(port, prefix)).completed ?? 0) < FOLLOWERS.length; i++) await sleep(100);

    // The follower's `1` gets the answer that waited through the restart.
    for (const openId of FOLLOWERS) {
      const fetched = await sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: '1', MsgId: nextMsgId() }), WINDOW_MS);
      expect(fetched.reply?.Content).toBe(`Echo: queued for ${openId}`);
      expect(dify.runRequests().filter((r) => (r.body as { user: string }).user === openId)).toHaveLength(1);
    }
    expect(dify.runRequests()).toHaveLength(FOLLOWERS.length);
    expect(ingress.child.exitCode).toBeNull();
  });
});

async function countJobs(port: number, prefix: string): Promise<Record<string, number>> {
  const client = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: null });
  const queue = new Queue(QUEUES.answer, { connection: client as never, prefix });
  try {
    return await queue.getJobCounts('waiting', 'active', 'completed', 'failed');
  } finally {
    await queue.close();
    client.disconnect();
  }
}
