import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { ConversationStore } from '../packages/core/src/conversation-store.js';
import { DeliveryStore, parseAnswerNotice, pushAllowanceFor } from '../packages/core/src/delivery-store.js';
import type { StoredAnswer } from '../packages/core/src/queue.js';
import { uniquePrefix } from './helpers/prefix.js';

const answer = (text: string): StoredAnswer => ({ parts: [{ type: 'text', text }], readyAt: Date.now() });
const MESSAGE = pushAllowanceFor({ kind: 'text' });
const follower = { account: 'acc', openId: 'o_user', queued: true, allowance: MESSAGE };
const finish = { account: 'acc', openId: 'o_user', dueAfterMs: 16_500 };
const who = { follower: { account: 'acc', openId: 'o_user' } };

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
    const a = await store.recordAttempt('job-a', follower, 1000);
    const b = await store.recordAttempt('job-a', follower, 6000);
    // alone in its follower's line, it heads it; the follower has no conversation yet
    expect(a).toEqual({ attempt: 1, firstAt: 1000, state: '', answered: false, headOfLine: { id: undefined, generation: '0' } });
    expect(b).toEqual({ attempt: 2, firstAt: 1000, state: '', answered: false, headOfLine: { id: undefined, generation: '0' } });
    // The message took its place in its follower's line at its first arrival, once.
    expect(await redis.zrange(store.orderKey('acc', 'o_user'), 0, -1)).toEqual(['job-a']);
  });

  it('says when a message heads its follower\'s line, with the conversation as it stands then', async () => {
    const them = { account: 'acc', openId: 'o_head', queued: true, allowance: MESSAGE };
    const conversations = new ConversationStore(redis, prefix);
    await conversations.save('acc', 'o_head', { id: undefined, generation: '0' }, 'conv-1');
    await conversations.clear('acc', 'o_head');
    await conversations.save('acc', 'o_head', { id: undefined, generation: '1' }, 'conv-2');
    expect((await store.recordAttempt('head-1', them)).headOfLine).toEqual({ id: 'conv-2', generation: '1' });
    // behind head-1: its turn comes later, and the conversation is read then
    expect((await store.recordAttempt('head-2', them)).headOfLine).toBeUndefined();
    // a message that does not go to Dify takes no place in line and heads nothing
    expect((await store.recordAttempt('view-2', { ...them, queued: false })).headOfLine).toBeUndefined();
    await store.saveAnswer('head-1', answer('one'), { ...finish, openId: 'o_head' });
    // head-1's answer is stored: head-2 heads the line now (a retry of it says so)
    expect((await store.recordAttempt('head-2', them)).headOfLine).toEqual({ id: 'conv-2', generation: '1' });
    // a retry of an answered message takes no place in line, and says it is answered
    expect(await store.recordAttempt('head-1', them)).toMatchObject({ state: '', answered: true });
    expect((await store.recordAttempt('head-1', them)).headOfLine).toBeUndefined();
  });

  describe('an attempt waiting when the answer is stored is granted it in the same script', () => {
    const them = (openId: string) => ({ account: 'acc', openId, queued: true, allowance: MESSAGE });
    const open = () => [Date.now() + 5000, Date.now() + 5000];
    /** The answers channel's messages, from a connection of its own. */
    const listen = async () => {
      const sub = new Redis(inject('redisUrl'));
      const notices: string[] = [];
      sub.on('message', (_channel: string, notice: string) => notices.push(notice));
      await sub.subscribe(store.answersChannel);
      return { notices, close: () => sub.disconnect() };
    };
    const noticeOf = async (notices: string[], jobId: string) => {
      const match = (n: string) => n === jobId || n.startsWith(`${jobId}\n`);
      for (let i = 0; i < 100 && !notices.some(match); i++) await new Promise((r) => setTimeout(r, 10));
      return parseAnswerNotice(notices.find(match)!);
    };

    it('state passive, no due entry, and the notice carries the answer; a retry finds it passive and may repeat it', async () => {
      const channel = await listen();
      try {
        await store.recordAttempt('grant-1', them('o_grant'), Date.now(), open());
        expect(await store.saveAnswer('grant-1', answer('granted'), { ...finish, openId: 'o_grant' })).toEqual({ state: 'passive', next: undefined });
        expect(await store.peek('grant-1')).toMatchObject({ state: 'passive', next: 1 });
        expect(await redis.zscore(store.dueKey, 'grant-1')).toBeNull();
        const notice = await noticeOf(channel.notices, 'grant-1');
        expect(notice).toEqual({ jobId: 'grant-1', granted: { parts: [{ type: 'text', text: 'granted' }], readyAt: expect.any(Number) } });
        // WeChat retries only when the granted reply did not arrive: the retry replies with it again
        await store.recordAttempt('grant-1', them('o_grant'), Date.now(), open());
        expect(await store.settle('grant-1', 'take')).toMatchObject({ state: 'passive', won: false, answer: { parts: [{ text: 'granted' }] } });
      } finally {
        channel.close();
      }
    });

    it('nothing is granted past the waiting deadline, to the last attempt, or without a deadline: the answer is due', async () => {
      const channel = await listen();
      try {
        await store.recordAttempt('grant-late', them('o_grant_late'), Date.now(), [Date.now() - 1, Date.now() - 1]);
        for (let n = 0; n < 3; n++) await store.recordAttempt('grant-last', them('o_grant_last'), Date.now(), open());
        await store.recordAttempt('grant-none', them('o_grant_none'));
        for (const [id, openId] of [['grant-late', 'o_grant_late'], ['grant-last', 'o_grant_last'], ['grant-none', 'o_grant_none']] as const) {
          expect(await store.saveAnswer(id, answer(id), { ...finish, openId })).toEqual({ state: '', next: undefined });
          expect(await redis.zscore(store.dueKey, id)).not.toBeNull();
          expect(await noticeOf(channel.notices, id)).toEqual({ jobId: id, granted: undefined });
        }
      } finally {
        channel.close();
      }
    });

    it('an answer over 16 KiB is granted, but its notice only wakes (the attempt reads it)', async () => {
      const channel = await listen();
      try {
        await store.recordAttempt('grant-big', them('o_grant_big'), Date.now(), open());
        expect((await store.saveAnswer('grant-big', answer('x'.repeat(20_000)), { ...finish, openId: 'o_grant_big' })).state).toBe('passive');
        expect(await noticeOf(channel.notices, 'grant-big')).toEqual({ jobId: 'grant-big', granted: undefined });
        expect((await store.settle('grant-big', 'take')).answer?.parts[0]).toEqual({ type: 'text', text: 'x'.repeat(20_000) });
      } finally {
        channel.close();
      }
    });

    it('a rerun that stores a second answer grants the first one, which stays', async () => {
      await store.recordAttempt('grant-rerun', them('o_grant_rerun'), Date.now(), [Date.now() - 1]);
      await store.saveAnswer('grant-rerun', answer('first'), { ...finish, openId: 'o_grant_rerun' });
      const channel = await listen();
      try {
        await store.recordAttempt('grant-rerun', them('o_grant_rerun'), Date.now(), [0, Date.now() + 5000]);
        expect((await store.saveAnswer('grant-rerun', answer('second'), { ...finish, openId: 'o_grant_rerun' })).state).toBe('passive');
        expect((await noticeOf(channel.notices, 'grant-rerun')).granted?.parts).toEqual([{ type: 'text', text: 'first' }]);
      } finally {
        channel.close();
      }
    });
  });

  it('a silent event is counted like an attempt but opens no push allowance', async () => {
    const them = { account: 'acc', openId: 'o_silent', queued: false, allowance: MESSAGE };
    await store.recordAttempt('msg-before', them);
    await store.setPushQuota('acc', 'o_silent', 0);
    expect(await store.recordAttempt('view-1', { ...them, allowance: pushAllowanceFor({ kind: 'event', event: 'VIEW' }) })).toMatchObject({ attempt: 1 });
    expect(await store.recordAttempt('view-1', { ...them, allowance: pushAllowanceFor({ kind: 'event', event: 'VIEW' }) })).toMatchObject({ attempt: 2 });
    expect((await store.usePushQuota('acc', 'o_silent')).ok).toBe(false);
    await store.recordAttempt('clear-1', them);
    expect((await store.usePushQuota('acc', 'o_silent')).ok).toBe(true);
  });

  it("orders a follower's line by Redis's clock, not by the replicas' clocks", async () => {
    const them = { account: 'acc', openId: 'o_skewed', queued: true, allowance: MESSAGE };
    // The second message reached a replica whose clock is 8 s behind the first one's.
    await store.recordAttempt('skew-1', them, 9000);
    await store.recordAttempt('skew-2', them, 1000);
    expect(await redis.zrange(store.orderKey('acc', 'o_skewed'), 0, -1)).toEqual(['skew-1', 'skew-2']);
    // `first` (deadlines are measured from it) keeps the replica's clock.
    expect((await store.peek('skew-2')).firstAt).toBe(1000);
  });

  it('reports the progress of 1200 jobs (three batches) without reading their answers', async () => {
    const ids = Array.from({ length: 1200 }, (_, i) => `prog-${i}`);
    await store.saveAnswer(ids[3]!, answer('three'), finish);
    await store.saveAnswer(ids[700]!, answer('seven hundred'), finish);
    await store.settle(ids[700]!, 'take');
    await redis.hset(store.key(ids[1199]!), 'state', 'wait');
    const progress = await store.progress(ids);
    expect(progress.size).toBe(1200);
    expect(progress.get(ids[3]!)).toEqual({ state: '', answered: true });
    expect(progress.get(ids[700]!)).toEqual({ state: 'passive', answered: true });
    expect(progress.get(ids[1199]!)).toEqual({ state: 'wait', answered: false });
    const moved = [...progress].filter(([, p]) => p.answered || p.state !== '').map(([id]) => id);
    expect(moved).toEqual([ids[3], ids[700], ids[1199]]);
  });

  it('lets an open attempt take a stored answer, and a retry repeat it', async () => {
    expect(await store.saveAnswer('job-b', answer('hi'), finish)).toMatchObject({ state: '' });
    const first = await store.settle('job-b', 'take');
    expect(first).toMatchObject({ state: 'passive', won: true, answer: { parts: [{ text: 'hi' }] } });
    const again = await store.settle('job-b', 'take');
    expect(again).toMatchObject({ state: 'passive', won: false, answer: { parts: [{ text: 'hi' }] } });
  });

  it('hands over to push at the last deadline when no answer exists, and the worker then pushes', async () => {
    const last = await store.settle('job-c', 'last', 'push');
    expect(last).toMatchObject({ state: 'push', won: true, answer: undefined });
    expect(await store.saveAnswer('job-c', answer('late'), finish)).toMatchObject({ state: 'push' });
    // A straggling attempt no longer takes it passively.
    expect((await store.settle('job-c', 'take')).state).toBe('push');
  });

  it('lets `1` fetch an answer that waits for it, once', async () => {
    await store.settle('job-d', 'last', 'wait', who);
    expect(await store.settle('job-d', 'fetch')).toMatchObject({ state: 'wait', answer: undefined, won: false });
    await store.saveAnswer('job-d', answer('for 1'), finish);
    expect(await store.settle('job-d', 'fetch')).toMatchObject({ state: 'fetched', won: true });
    expect(await store.settle('job-d', 'fetch')).toMatchObject({ state: 'fetched', won: false });
  });

  it('puts an answer no attempt took in the due set, and takes it out when an attempt takes it', async () => {
    await store.recordAttempt('job-f', follower, 5000);
    await store.saveAnswer('job-f', answer('due'), finish);
    expect(await redis.zscore(store.dueKey, 'job-f')).toBe(String(5000 + 16_500));
    expect(await store.dueAnswers(5000 + 16_500)).toEqual([{ jobId: 'job-f', account: 'acc', openId: 'o_user' }]);
    await store.settle('job-f', 'take');
    expect(await redis.zscore(store.dueKey, 'job-f')).toBeNull();
    // Storing the answer ended the job's turn in its follower's line.
    expect(await redis.zscore(store.orderKey('acc', 'o_user'), 'job-f')).toBeNull();
  });

  it('a hand-over to wait enters the pending set in the same step; `1` serves the oldest pending answer until it is fully delivered', async () => {
    const them = { account: 'acc', openId: 'o_pending', queued: true, allowance: MESSAGE };
    const whom = { follower: { account: 'acc', openId: 'o_pending' } };
    for (const id of ['pend-b', 'pend-c']) await store.recordAttempt(id, them);
    // C is handed over first: the set still serves B (earlier in line) first.
    await store.settle('pend-c', 'last', 'wait', whom);
    await store.settle('pend-b', 'last', 'wait', whom);
    expect(await redis.zrange(store.pendingKey('acc', 'o_pending'), 0, -1)).toEqual(['pend-b', 'pend-c']);
    expect(await store.getPending('acc', 'o_pending')).toBe('pend-b');
    await store.saveAnswer('pend-b', answer('b'), { ...finish, openId: 'o_pending' });
    expect(await store.settle('pend-b', 'fetch')).toMatchObject({ state: 'fetched', won: true });
    // B went out whole: the next `1` is for C; B's entry is dropped on the way.
    expect(await store.getPending('acc', 'o_pending')).toBe('pend-c');
    expect(await redis.zrange(store.pendingKey('acc', 'o_pending'), 0, -1)).toEqual(['pend-c']);
    // An entry whose state expired (48 h) is dropped too.
    await redis.del(store.key('pend-c'));
    expect(await store.getPending('acc', 'o_pending')).toBeUndefined();
  });

  it('keeps the due entry of a push hand-over (re-scored) until the push job is enqueued', async () => {
    await store.recordAttempt('due-push', follower, Date.now());
    await store.saveAnswer('due-push', answer('p'), finish);
    const before = Date.now();
    expect(await store.settle('due-push', 'handoff', 'push', who)).toMatchObject({ state: 'push', won: true, answer: { parts: [{ text: 'p' }] } });
    const score = Number(await redis.zscore(store.dueKey, 'due-push'));
    expect(score).toBeGreaterThan(before + 5000);
    // A sweep after that time sees it handed over, with its answer: it enqueues the push again (idempotent) and drops it.
    expect(await store.settle('due-push', 'handoff', 'push', who)).toMatchObject({ state: 'push', won: false, answer: { parts: [{ text: 'p' }] } });
  });

  it('refuses a passive take past notAfter (Redis clock): take takes nothing, last hands over', async () => {
    await store.saveAnswer('late-take', answer('late'), finish);
    const past = Date.now() - 1;
    expect(await store.settle('late-take', 'take', '', { notAfter: past })).toMatchObject({ state: '', won: false });
    expect(await store.settle('late-take', 'last', 'wait', { ...who, notAfter: past })).toMatchObject({ state: 'wait', won: true });
    expect(await redis.zscore(store.pendingKey('acc', 'o_user'), 'late-take')).not.toBeNull();
    expect(await store.settle('late-take', 'fetch', '', { notAfter: past })).toMatchObject({ state: 'wait', won: false });
    await store.saveAnswer('in-time', answer('ok'), finish);
    expect(await store.settle('in-time', 'last', 'wait', { ...who, notAfter: Date.now() + 1000 })).toMatchObject({ state: 'passive', won: true });
  });

  it('hands a passive take whose reply could not leave over after all (reclaim)', async () => {
    await store.saveAnswer('reclaimed', answer('r'), finish);
    await store.settle('reclaimed', 'last', 'wait', who);
    expect(await store.settle('reclaimed', 'reclaim', 'wait', who)).toMatchObject({ state: 'wait', won: true });
    expect((await store.peek('reclaimed')).next).toBe(0);
    expect(await redis.zscore(store.pendingKey('acc', 'o_user'), 'reclaimed')).not.toBeNull();
    expect(await store.settle('reclaimed', 'fetch')).toMatchObject({ state: 'fetched', won: true });
  });

  it('a late hand-over does not override an answer already delivered passively', async () => {
    await store.saveAnswer('job-e', answer('x'), finish);
    await store.settle('job-e', 'take');
    expect(await store.settle('job-e', 'handoff', 'push')).toMatchObject({ state: 'passive', won: false });
  });

  it('hands each part out once, to whichever claimer comes first, and `next` only moves forward', async () => {
    const parts = (n: number): StoredAnswer => ({ parts: Array.from({ length: n }, (_, i) => ({ type: 'text', text: `p${i}` })), readyAt: 0 });
    await store.saveAnswer('job-claim', parts(4), finish);
    expect(await store.claimPart('job-claim')).toBeUndefined(); // not delivered yet: attempts may still take it
    await store.settle('job-claim', 'take'); // part 0 went in the passive reply
    // Two claimers (the push job and a `1`) on two connections, racing.
    const otherRedis = new Redis(inject('redisUrl'));
    const other = new DeliveryStore(otherRedis, prefix);
    const claims = await Promise.all([store.claimPart('job-claim'), other.claimPart('job-claim'), store.claimPart('job-claim'), other.claimPart('job-claim')]);
    expect(claims.map((c) => c?.index).sort()).toEqual([1, 2, 3, undefined]);
    // Part 3 was not sent: it can be given back while nothing after it was claimed.
    expect(await store.giveBackPart('job-claim', 3)).toBe(true);
    expect(await other.claimPart('job-claim')).toMatchObject({ index: 3, part: { text: 'p3' }, remaining: 0 });
    // Giving back a part with a later one handed out would hand that one out again: refused.
    expect(await store.giveBackPart('job-claim', 1)).toBe(false);
    expect(await store.claimPart('job-claim')).toBeUndefined();
    await otherRedis.quit();
  });

  it('never replaces a stored answer: a rerun of the job keeps the half-delivered one', async () => {
    await store.saveAnswer('job-rerun', { parts: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }], readyAt: 1 }, finish);
    await store.settle('job-rerun', 'take');
    await store.saveAnswer('job-rerun', answer('different'), finish);
    expect((await store.peek('job-rerun')).answer?.parts).toEqual([{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }]);
    expect(await store.claimPart('job-rerun')).toMatchObject({ index: 1, part: { text: 'b' } });
  });

  it('opens WeChat\'s allowance per trigger at a message\'s first arrival: 5 for 48 h per message, 3 for 1 min per menu click, follow or scan', async () => {
    const them = { account: 'acc', openId: 'o_triggers', queued: true };
    const quotaKey = `${prefix}:quota:acc:o_triggers`;
    await store.recordAttempt('click-1', { ...them, allowance: pushAllowanceFor({ kind: 'event', event: 'CLICK' }) });
    expect(await redis.get(quotaKey)).toBe('3');
    expect(await redis.ttl(quotaKey)).toBeLessThanOrEqual(60);
    await store.recordAttempt('text-1', { ...them, allowance: MESSAGE });
    expect(await redis.get(quotaKey)).toBe('5');
    expect(await redis.ttl(quotaKey)).toBeGreaterThan(47 * 3600);
    // Pushes of an earlier answer used two; WeChat's retry of the same message gives nothing back.
    await store.usePushQuota('acc', 'o_triggers');
    await store.usePushQuota('acc', 'o_triggers');
    await store.recordAttempt('text-1', { ...them, allowance: MESSAGE });
    expect(await redis.get(quotaKey)).toBe('3');
    for (const event of ['subscribe', 'SCAN', 'scancode_push']) expect(pushAllowanceFor({ kind: 'event', event })).toEqual({ count: 3, ttlS: 60 });
    for (const event of ['VIEW', 'LOCATION', 'unsubscribe']) expect(pushAllowanceFor({ kind: 'event', event })).toBeUndefined();
  });

  it('an expired allowance allows no push and is not brought back as a key that never expires', async () => {
    const key = `${prefix}:quota:acc:o_expired`;
    expect(await store.usePushQuota('acc', 'o_expired')).toEqual({ ok: false, left: 0 });
    await store.setPushQuota('acc', 'o_expired', 0);
    expect(await redis.exists(key)).toBe(0);
  });

  it('gives a failed push back to the allowance, never above WeChat\'s 5', async () => {
    const open = () => store.recordAttempt(`quota-${Math.random()}`, { account: 'acc', openId: 'o_quota', queued: false, allowance: MESSAGE });
    await open();
    await store.usePushQuota('acc', 'o_quota');
    await store.usePushQuota('acc', 'o_quota');
    await store.giveBackPush('acc', 'o_quota');
    expect(await store.usePushQuota('acc', 'o_quota')).toEqual({ ok: true, left: 3 });
    await open();
    await store.giveBackPush('acc', 'o_quota');
    expect(await store.usePushQuota('acc', 'o_quota')).toEqual({ ok: true, left: 4 });
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
        jitter().then(() => store.settle(id, 'last', mode, who)),
        jitter().then(() => worker.saveAnswer(id, answer(`a${i}`), finish).then((r) => r.state)),
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
