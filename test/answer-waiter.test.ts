import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterEach, beforeEach, describe, expect, inject, it } from 'vitest';
import { createLogger, createRedis, DeliveryStore, type RedisClient, type SettleResult, type StoredAnswer } from '../packages/core/src/index.js';
import { AnswerWaiter } from '../apps/ingress/src/answer-waiter.js';
import { uniquePrefix } from './helpers/prefix.js';

// The ingress's one shared wait mechanism (issue 2): one subscriber connection and one timer per
// process, however many requests wait; a PUBLISH wakes a wait at once, a lost one is caught by
// the safety poll or by the wake-up that follows a reconnect of the subscriber.

const answer = (text: string): StoredAnswer => ({ parts: [{ type: 'text', text }], readyAt: Date.now() });
const finish = { account: 'acc', openId: 'o_waiter', dueAfterMs: 16_500 };
const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

/** The real store, counting how often a wait looks at Redis. */
class CountingStore extends DeliveryStore {
  settles = 0;
  /** Job ids of each safety poll. */
  polls: string[][] = [];
  override async settle(...args: Parameters<DeliveryStore['settle']>): Promise<SettleResult> {
    this.settles++;
    return super.settle(...args);
  }
  override async progress(jobIds: string[]): ReturnType<DeliveryStore['progress']> {
    this.polls.push(jobIds);
    return super.progress(jobIds);
  }
}

describe('AnswerWaiter', () => {
  let redis: Redis;
  let subscriber: RedisClient;
  let store: CountingStore;
  let waiter: AnswerWaiter;
  let connectionName: string;

  const startWaiter = async (pollMs?: number) => {
    connectionName = `waiter-${randomBytes(4).toString('hex')}`;
    subscriber = createRedis(inject('redisUrl'), { blocking: true, name: connectionName });
    waiter = new AnswerWaiter({ subscriber, store, logger: createLogger({ level: 'silent' }), ...(pollMs ? { pollMs } : {}) });
    await waiter.ready();
  };
  /** Stores an answer the way a worker does, but without the PUBLISH: a wake-up that got lost. */
  const storeSilently = (jobId: string, text: string) => redis.hset(store.key(jobId), 'ans', JSON.stringify(answer(text)));

  beforeEach(() => {
    // A client without commandTimeout: its commands arm no timers of their own, so the count below is the waiter's.
    redis = new Redis(inject('redisUrl'));
    store = new CountingStore(redis, uniquePrefix());
  });
  afterEach(async () => {
    await waiter?.close();
    subscriber?.disconnect();
    await redis.quit();
  });

  it('wakes each of 200 concurrent waits within 100 ms of its answer, with one timer for all of them', async () => {
    await startWaiter();
    const before = timers();
    const ids = Array.from({ length: 200 }, (_, i) => `job-many-${i}`);
    const taken = new Map<string, number>();
    const waits = ids.map((id) => waiter.take(id, Date.now() + 20_000).then((r) => (taken.set(id, Date.now()), r)));
    await sleep(50);
    expect(waiter.waiting).toBe(200);
    // A timer per waiting request would show here as 200 more.
    expect(timers() - before).toBeLessThanOrEqual(2);

    const savedAt = new Map<string, number>();
    for (const id of ids) {
      await store.saveAnswer(id, answer(id), finish);
      savedAt.set(id, Date.now());
    }
    const results = await Promise.all(waits);
    expect(results.map((r) => r.answer?.parts[0])).toEqual(ids.map((id) => ({ type: 'text', text: id })));
    const lags = ids.map((id) => taken.get(id)! - savedAt.get(id)!);
    expect(Math.max(...lags)).toBeLessThan(100);
    expect(waiter.waiting).toBe(0);
    await sleep(20);
    expect(timers()).toBeLessThanOrEqual(before);
  });

  it('looks at Redis once a second for all waits together, not once per wait', async () => {
    await startWaiter();
    const start = Date.now();
    const ids = Array.from({ length: 200 }, (_, i) => `job-idle-${i}`);
    const results = await Promise.all(ids.map((id) => waiter.take(id, start + 2500)));
    expect(results.every((r) => r.state === '')).toBe(true);
    // Per wait: the first check and the last one at the deadline; the safety polls found nothing to settle.
    expect(store.settles).toBe(200 * 2);
    // One poll a second (at 1 s and 2 s), each a single look at all 200 jobs.
    expect(store.polls.length).toBe(2);
    for (const poll of store.polls) expect([...poll].sort()).toEqual([...ids].sort());
    expect(Date.now() - start).toBeLessThan(2500 + 300);
  });

  it('wakes from a safety poll only the waits whose job moved on', async () => {
    await startWaiter();
    const start = Date.now();
    const ids = Array.from({ length: 50 }, (_, i) => `job-some-${i}`);
    const waits = ids.map((id) => waiter.take(id, start + 3000));
    await sleep(100);
    // Two lost wake-ups: an answer stored, and a hand-over by another replica (state push).
    await storeSilently(ids[0]!, 'found by the poll');
    await redis.hset(store.key(ids[1]!), 'state', 'push');
    expect(await waits[0]).toMatchObject({ state: 'passive', won: true, answer: { parts: [{ text: 'found by the poll' }] } });
    expect(await waits[1]).toMatchObject({ state: 'push', won: false });
    expect(Date.now() - start).toBeLessThan(1300);
    // The first checks, and one more each for the two the poll woke; the other 48 still wait.
    expect(store.settles).toBe(50 + 2);
    expect(waiter.waiting).toBe(48);
    await Promise.all(waits);
  });

  it('leaves a `1` waiting on an answer still being written alone at a poll, and wakes it once the answer is stored', async () => {
    await startWaiter();
    // The answer was handed over for `1` before it existed: state wait, no answer yet.
    await redis.hset(store.key('job-fetch'), 'state', 'wait');
    const start = Date.now();
    const wait = waiter.take('job-fetch', start + 4000, { mode: 'fetch' });
    await sleep(1200);
    expect(store.polls.length).toBeGreaterThanOrEqual(1);
    expect(store.settles).toBe(1);
    await storeSilently('job-fetch', 'for the 1');
    expect(await wait).toMatchObject({ state: 'fetched', won: true, answer: { parts: [{ text: 'for the 1' }] } });
    expect(Date.now() - start).toBeLessThan(2400);
    expect(store.settles).toBe(2);
  });

  it('returns the answer a worker granted to the waiting attempt as its wake-up carries it, without settling', async () => {
    await startWaiter();
    const follower = { account: 'acc', openId: 'o_granted', queued: true, allowance: undefined };
    await store.recordAttempt('job-granted', follower, Date.now(), [Date.now() + 4000]);
    const wait = waiter.take('job-granted', Date.now() + 4000, { fresh: true });
    // a `1` waiting on the same job is not an attempt: it is not granted anything and looks for itself
    const fetch = waiter.take('job-granted', Date.now() + 300, { mode: 'fetch' });
    await sleep(50);
    const settlesBefore = store.settles;
    expect(await store.saveAnswer('job-granted', answer('granted'), { ...finish, openId: 'o_granted' })).toMatchObject({ state: 'passive' });
    expect(await wait).toMatchObject({ state: 'passive', won: true, answer: { parts: [{ text: 'granted' }] } });
    expect((await fetch).won).toBe(false);
    // only the `1` settled after the answer was stored
    expect(store.settles - settlesBefore).toBe(1);
  });

  it('settles when a wake-up says nothing was granted, or carries a notice it cannot read', async () => {
    await startWaiter();
    const waits = ['job-bare', 'job-garbled'].map((id) => waiter.take(id, Date.now() + 4000, { fresh: true }));
    await sleep(50);
    await storeSilently('job-bare', 'bare');
    await storeSilently('job-garbled', 'garbled');
    await redis.publish(store.answersChannel, 'job-bare');
    await redis.publish(store.answersChannel, 'job-garbled\n{not json');
    const results = await Promise.all(waits);
    expect(results.map((r) => [r.state, r.won, r.answer?.parts[0]])).toEqual([
      ['passive', true, { type: 'text', text: 'bare' }],
      ['passive', true, { type: 'text', text: 'garbled' }],
    ]);
    expect(store.settles).toBe(2);
  });

  it('catches an answer whose PUBLISH was lost within about a second', async () => {
    await startWaiter();
    const start = Date.now();
    const wait = waiter.take('job-lost', start + 4000);
    await sleep(100);
    await storeSilently('job-lost', 'no publish');
    const result = await wait;
    expect(result).toMatchObject({ state: 'passive', won: true, answer: { parts: [{ text: 'no publish' }] } });
    expect(Date.now() - start).toBeLessThan(1300);
  });

  it('returns at its deadline when no answer comes, and sees an answer stored before it began at once', async () => {
    await startWaiter();
    const start = Date.now();
    expect((await waiter.take('job-none', start + 300)).state).toBe('');
    expect(Date.now() - start).toBeGreaterThanOrEqual(295);
    expect(Date.now() - start).toBeLessThan(450);

    await store.saveAnswer('job-before', answer('early'), finish);
    const t = Date.now();
    expect(await waiter.take('job-before', Date.now() + 4000)).toMatchObject({ state: 'passive', won: true });
    expect(Date.now() - t).toBeLessThan(100);
  });

  it('re-checks every wait as soon as the subscriber is back after a disconnect', async () => {
    // A safety poll far beyond the deadline: only the wake-up after the reconnect can find the answer early.
    await startWaiter(60_000);
    const wait = waiter.take('job-reconnect', Date.now() + 5000);
    // Past the first second, so that a 1 s safety poll (were it still per request) is as far away as it gets.
    await sleep(1100);
    const clients = (await redis.client('LIST')) as string;
    const id = clients.split('\n').find((line) => line.includes(` name=${connectionName} `))?.match(/^id=(\d+)/)?.[1];
    expect(id).toBeDefined();
    const killedAt = Date.now();
    await redis.client('KILL', 'ID', id!);
    // Published while nobody listens: lost.
    await store.saveAnswer('job-reconnect', answer('after reconnect'), finish);
    const result = await wait;
    expect(result).toMatchObject({ state: 'passive', won: true, answer: { parts: [{ text: 'after reconnect' }] } });
    // ioredis reconnects after 200 ms; the next safety poll would come 900 ms after the kill.
    expect(Date.now() - killedAt).toBeLessThan(700);
  });

  it('returns at once when WeChat hangs up, without settling again', async () => {
    await startWaiter();
    const hangUp = new AbortController();
    const wait = waiter.take('job-abort', Date.now() + 4000, { signal: hangUp.signal });
    await sleep(50);
    expect(store.settles).toBe(1);
    await storeSilently('job-abort', 'nobody listens');
    const t = Date.now();
    hangUp.abort();
    const result = await wait;
    expect(Date.now() - t).toBeLessThan(50);
    expect(result.state).toBe('');
    // The answer was not taken for a reply nobody receives: it is still open for hand-over.
    expect(store.settles).toBe(1);
    expect(await redis.hget(store.key('job-abort'), 'state')).toBeNull();
  });
});
