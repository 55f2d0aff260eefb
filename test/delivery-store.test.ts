import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { DeliveryStore } from '../packages/core/src/delivery-store.js';
import type { StoredAnswer } from '../packages/core/src/queue.js';
import { uniquePrefix } from './helpers/prefix.js';

const answer = (text: string): StoredAnswer => ({ parts: [{ type: 'text', text }], readyAt: Date.now() });

describe('DeliveryStore', () => {
  let redis: Redis;
  let store: DeliveryStore;
  const prefix = uniquePrefix();
  beforeAll(() => {
    redis = new Redis(inject('redisUrl'));
    store = new DeliveryStore(redis, prefix);
  });
  afterAll(() => redis.quit());

  it('counts attempts and keeps the first arrival time', async () => {
    const a = await store.recordAttempt('job-a', 1000);
    const b = await store.recordAttempt('job-a', 6000);
    expect(a).toEqual({ attempt: 1, firstAt: 1000, state: '' });
    expect(b).toEqual({ attempt: 2, firstAt: 1000, state: '' });
  });

  it('lets an open attempt take a stored answer, and a retry repeat it', async () => {
    expect(await store.saveAnswer('job-b', answer('hi'))).toBe('');
    const first = await store.settle('job-b', 'take');
    expect(first).toMatchObject({ state: 'passive', won: true, answer: { parts: [{ text: 'hi' }] } });
    const again = await store.settle('job-b', 'take');
    expect(again).toMatchObject({ state: 'passive', won: false, answer: { parts: [{ text: 'hi' }] } });
  });

  it('hands over to push at the last deadline when no answer exists, and the worker then pushes', async () => {
    const last = await store.settle('job-c', 'last', 'push');
    expect(last).toMatchObject({ state: 'push', won: true, answer: undefined });
    expect(await store.saveAnswer('job-c', answer('late'))).toBe('push');
    // A straggling attempt no longer takes it passively.
    expect((await store.settle('job-c', 'take')).state).toBe('push');
  });

  it('lets `1` fetch an answer that waits for it, once', async () => {
    await store.settle('job-d', 'last', 'wait');
    expect(await store.settle('job-d', 'fetch')).toMatchObject({ state: 'wait', answer: undefined, won: false });
    await store.saveAnswer('job-d', answer('for 1'));
    expect(await store.settle('job-d', 'fetch')).toMatchObject({ state: 'fetched', won: true });
    expect(await store.settle('job-d', 'fetch')).toMatchObject({ state: 'fetched', won: false });
  });

  it('a late settle job does not override an answer already delivered passively', async () => {
    await store.saveAnswer('job-e', answer('x'));
    await store.settle('job-e', 'take');
    expect(await store.settle('job-e', 'handoff', 'push')).toMatchObject({ state: 'passive', won: false });
  });

  it.each(['push', 'wait'] as const)('settles the deadline race exactly once (%s mode), 300 times in a row', async (mode) => {
    // The ingress giving up at the last deadline and the worker finishing, on two connections
    // (two processes), each started after a random few hundred microseconds.
    const other = new Redis(inject('redisUrl'));
    const worker = new DeliveryStore(other, prefix);
    const jitter = () => new Promise((r) => (Math.random() < 0.5 ? setImmediate(r) : process.nextTick(r)));
    const outcomes = { passive: 0, handedOver: 0 };
    for (let i = 0; i < 300; i++) {
      const id = `race-${mode}-${i}`;
      const [last, finished] = await Promise.all([
        jitter().then(() => store.settle(id, 'last', mode)),
        jitter().then(() => worker.saveAnswer(id, answer(`a${i}`))),
      ]);
      const passive = last.state === 'passive' && last.answer !== undefined;
      const handedOver = last.state === mode && finished === mode;
      expect(passive !== handedOver).toBe(true); // exactly one path delivers
      if (passive) outcomes.passive++;
      else outcomes.handedOver++;
    }
    await other.quit();
    // Both interleavings happened, and each was settled once.
    expect(outcomes.passive).toBeGreaterThan(0);
    expect(outcomes.handedOver).toBeGreaterThan(0);
  });
});
