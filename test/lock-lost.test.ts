import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QUEUES } from '../packages/core/src/index.js';
import { lineSink } from './helpers/line-sink.js';
import { testEnv } from './helpers/stack.js';
import { useFakeStack } from './helpers/fake-stack.js';
import { eventually, nextMsgId, slowQuery } from './helpers/wechat-timing.js';

// A worker that can no longer renew a job's lock (Redis lost it, or another worker took the job
// over as stalled) must stop its own run, so two workers never stream the same answer.
describe('a lost job lock', () => {
  const { sink, lines } = lineSink();
  const fx = useFakeStack({
    dify: { pingIntervalMs: 200 },
    env: ({ dify }) => testEnv({ dify, overrides: { LOG_LEVEL: 'warn', WECHAT_TIMEOUT_MS: '1000', REPLY_MARGIN_MS: '100' } }),
    stack: { logDestination: sink },
  });
  let queue: Queue;
  beforeAll(() => {
    queue = new Queue(QUEUES.answer, { connection: fx.redis, prefix: fx.stack.config.queuePrefix });
  });
  afterAll(() => queue.close());

  it('cancels the worker\'s own run when the lock cannot be renewed: the Dify request is aborted', { timeout: 20_000 }, async () => {
    const openId = 'o_lock_lost';
    const msgId = nextMsgId();
    const jobId = `m~default~${openId}~${msgId}`;
    const sim = fx.stack.simulator('plain');
    void sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: slowQuery('lock', 15_000), MsgId: msgId }));
    await eventually(async () => (await queue.getJobState(jobId)) === 'active' && fx.dify.runRequests().length === 1, 5000);
    // The lock disappears (as when another worker took the job over): the next renewal fails.
    expect(await fx.redis.del(`${fx.stack.config.queuePrefix}:answer:${jobId}:lock`)).toBe(1);
    const run = fx.dify.runRequests()[0]!;
    expect(run.clientClosed).toBe(false);
    // BullMQ renews locks every lockDuration / 2 (7.5 s).
    await eventually(() => lines.some((l) => l.includes('job lock lost') && l.includes(jobId)), 10_000);
    await eventually(() => run.clientClosed, 2000);
    expect(run.finished).toBe(false);
  });
});
