import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { QUEUES } from '../packages/core/src/index.js';
import { lineSink } from './helpers/line-sink.js';
import { startStack, testEnv, type Stack } from './helpers/stack.js';
import { eventually, nextMsgId, slowQuery } from './helpers/wechat-timing.js';

// A worker that can no longer renew a job's lock (Redis lost it, or another worker took the job
// over as stalled) must stop its own run, so two workers never stream the same answer.
describe('a lost job lock', () => {
  let dify: FakeDify;
  let stack: Stack;
  let redis: Redis;
  let queue: Queue;
  const { sink, lines } = lineSink();

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', pingIntervalMs: 200 });
    stack = await startStack(testEnv({ dify, overrides: { LOG_LEVEL: 'warn', WECHAT_TIMEOUT_MS: '1000', REPLY_MARGIN_MS: '100' } }), { logDestination: sink });
    redis = new Redis(inject('redisUrl'));
    queue = new Queue(QUEUES.answer, { connection: redis, prefix: stack.config.queuePrefix });
  });
  afterAll(async () => {
    await stack.close();
    await queue.close();
    await Promise.all([dify.close(), redis.quit()]);
  });

  it('cancels the worker\'s own run when the lock cannot be renewed: the Dify request is aborted', { timeout: 20_000 }, async () => {
    const openId = 'o_lock_lost';
    const msgId = nextMsgId();
    const jobId = `m~default~${openId}~${msgId}`;
    const sim = stack.simulator('plain');
    void sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: slowQuery('lock', 15_000), MsgId: msgId }));
    await eventually(async () => (await queue.getJobState(jobId)) === 'active' && dify.runRequests().length === 1, 5000);
    // The lock disappears (as when another worker took the job over): the next renewal fails.
    expect(await redis.del(`${stack.config.queuePrefix}:answer:${jobId}:lock`)).toBe(1);
    const run = dify.runRequests()[0]!;
    expect(run.clientClosed).toBe(false);
    // BullMQ renews locks every lockDuration / 2 (7.5 s).
    await eventually(() => lines.some((l) => l.includes('job lock lost') && l.includes(jobId)), 10_000);
    await eventually(() => run.clientClosed, 2000);
    expect(run.finished).toBe(false);
  });
});
