import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { PushLine } from '../apps/worker/src/push-line.js';
import { JOBS, QUEUES, type PushJobData } from '../packages/core/src/index.js';
import { uniquePrefix } from './helpers/prefix.js';

// The per-follower push line on a real Redis: the job that leaves it wakes the one behind.
describe('push line', () => {
  const prefix = uniquePrefix();
  let redis: Redis;
  let queue: Queue<PushJobData>;

  beforeAll(() => {
    redis = new Redis(inject('redisUrl'));
    queue = new Queue<PushJobData>(QUEUES.push, { connection: redis, prefix });
  });
  afterAll(async () => {
    await queue.close();
    redis.disconnect();
  });

  it('promotes the parked push job behind the one that leaves, instead of leaving it parked until its delay ends', async () => {
    const line = new PushLine(redis, prefix, queue);
    const data: PushJobData = { account: 'default', answerJobId: 'm~default~o_line~1', openId: 'o_line' };
    // Two push jobs parked for a minute, the second one already in line behind the first.
    const first = await queue.add(JOBS.push, data, { jobId: 'push~a~0', delay: 60_000 });
    const second = await queue.add(JOBS.push, { ...data, answerJobId: 'm~default~o_line~2' }, { jobId: 'push~b~0', delay: 60_000 });
    await redis.zadd(`${prefix}:push-line:default:o_line`, 2000, second.id!);
    await redis.zadd(`${prefix}:push-seen:default:o_line`, Date.now(), second.id!);

    const ran = await line.run(first, undefined, { account: 'default', openId: 'o_line', order: 1000 }, async () => 'pushed');

    expect(ran).toBe('pushed');
    expect(await redis.zrange(`${prefix}:push-line:default:o_line`, 0, -1)).toEqual([second.id]);
    expect(await second.getState()).toBe('waiting');
  });
});
