import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startWorker } from '../apps/worker/src/index.js';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { freePort } from './helpers/redis-server.js';
import { startStack, testEnv, type Stack } from './helpers/stack.js';
import { eventually, nextMsgId, slowQuery } from './helpers/wechat-timing.js';

// Each part claimed once (push job and `1` alike), allowance and claims given back only on sure
// failures, answers pushed in order per follower, answer reruns, shutdown mid-push. WeChat's
// window shrunk to 1 s, customer-service mode.
const WINDOW = 1000;
const SEND = '/cgi-bin/message/custom/send';

/** An answer of `n` parts (each paragraph fills one part), part i starting with `i `. */
const longAnswer = (n: number) => Array.from({ length: n }, (_, i) => `${i} ${'x'.repeat(1500)}`).join('\n\n');
/** The part numbers of texts, without the "reply 1" notice. */
const partNumbers = (texts: string[]) => texts.map((t) => t.split(' ')[0]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('customer-service pushes: claims, allowance, order, reruns, shutdown', () => {
  let dify: FakeDify;
  let wechat: FakeWeChat;
  let stack: Stack;
  let redis: Redis;
  let queues: { answer: Queue; push: Queue };

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', pingIntervalMs: 200 });
    wechat = await new FakeWeChat().start();
    stack = await startStack(
      testEnv({ dify, wechatUrl: wechat.url, overrides: { ENABLE_CUSTOM_MESSAGE: 'true', LANGUAGE: 'en_US', WECHAT_TIMEOUT_MS: String(WINDOW), REPLY_MARGIN_MS: '100' } }),
    );
    redis = new Redis(inject('redisUrl'));
    const opts = { connection: redis, prefix: stack.config.queuePrefix };
    queues = { answer: new Queue('answer', opts), push: new Queue('push', opts) };
  });
  afterAll(async () => {
    await stack.close();
    await Promise.all([queues.answer.close(), queues.push.close()]);
    await Promise.all([dify.close(), wechat.close(), redis.quit()]);
  });

  const message = (openId: string, content: string, msgId = nextMsgId()) => {
    const sim = stack.simulator('plain');
    return { msgId, jobId: `m~default~${openId}~${msgId}`, delivery: sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: content, MsgId: msgId }), WINDOW) };
  };
  const one = async (openId: string) => {
    const sim = stack.simulator('plain');
    return (await sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: '1', MsgId: nextMsgId() }))).reply?.Content ?? '';
  };
  const pushesTo = (openId: string) => wechat.pushed.filter((m) => m.touser === openId);

  it('a `1` sent while parts are being pushed takes a part no push sends: each part once, in order', async () => {
    const openId = 'o_claim_race';
    dify.enqueue({ name: 'normal', answer: longAnswer(6) });
    wechat.slowPushWhen((m) => (m.touser === openId ? 400 : undefined));
    const first = (await message(openId, 'long').delivery).accepted!.reply!.Content!;
    // Part 2 has reached WeChat and its answer is still on the way when the follower sends `1`.
    await eventually(() => pushesTo(openId).length === 2, 5000);
    const reply = await one(openId);
    const repliedAt = Date.now();
    await eventually(() => pushesTo(openId).length === 4, 5000);
    await sleep(1000);
    wechat.slowPushWhen(undefined);
    const seen = [{ at: 0, text: first }, { at: repliedAt, text: reply }, ...pushesTo(openId).map((m) => ({ at: m.at, text: m.text!.content }))];
    seen.sort((a, b) => a.at - b.at);
    expect(partNumbers(seen.map((s) => s.text))).toEqual(['0', '1', '2', '3', '4', '5']);
  });

  it('a push WeChat may have received (connection lost before its answer) counts as sent and is not sent again', async () => {
    const openId = 'o_hung_up';
    dify.enqueue({ name: 'normal', answer: longAnswer(3) });
    let hangUps = 1;
    wechat.slowPushWhen((m) => (m.touser === openId && hangUps-- > 0 ? 'hang-up' : undefined));
    await message(openId, 'hang up').delivery;
    await eventually(() => pushesTo(openId).length === 2, 5000);
    await sleep(2500); // a BullMQ retry of the push job would have come by now
    wechat.slowPushWhen(undefined);
    expect(partNumbers(wechat.textsTo(openId))).toEqual(['1', '2']);
  });

  it('a push refused with -1 gives its allowance back: the "reply 1" notice comes with the fifth push', async () => {
    const openId = 'o_busy_quota';
    dify.enqueue({ name: 'normal', answer: longAnswer(7) });
    let busy = 4; // one more than the client's own back-off absorbs: the push job fails once and BullMQ retries it
    wechat.failWhen((c) => (c.path === SEND && c.body.touser === openId && busy-- > 0 ? -1 : undefined));
    await message(openId, 'busy').delivery;
    await eventually(() => wechat.textsTo(openId).length === 5, 12_000);
    await sleep(500);
    wechat.failWhen(undefined);
    const texts = wechat.textsTo(openId);
    expect(partNumbers(texts)).toEqual(['1', '2', '3', '4', '5']);
    expect(texts.map((t) => /reply 1/i.test(t))).toEqual([false, false, false, false, true]);
    expect(partNumbers([await one(openId)])).toEqual(['6']);
  });

  it("pushes two answers of one follower in answer order even when the first one's push fails and backs off", async () => {
    const openId = 'o_push_order';
    let busy = 4;
    wechat.failWhen((c) => (c.path === SEND && c.body.touser === openId && busy-- > 0 ? -1 : undefined));
    const a = message(openId, slowQuery('first', 2900));
    await sleep(50);
    const b = message(openId, slowQuery('second', 100));
    await Promise.all([a.delivery, b.delivery]);
    await eventually(() => wechat.textsTo(openId).length === 2, 15_000);
    wechat.failWhen(undefined);
    expect(wechat.textsTo(openId)).toEqual(['Echo: first', 'Echo: second']);
  });

  it('a menu click allows 3 pushes (WeChat\'s allowance for a click), the third telling the follower to reply 1', async () => {
    const openId = 'o_menu_click';
    dify.enqueue({ name: 'normal', answer: longAnswer(5), delayMs: 3 * WINDOW + 500 });
    const sim = stack.simulator('plain');
    await sim.deliver(sim.messageXml(openId, { MsgType: 'event', Event: 'CLICK', EventKey: 'menu_news' }), WINDOW);
    await eventually(() => pushesTo(openId).length === 3, 8000);
    await sleep(1000);
    const texts = pushesTo(openId).map((m) => m.text!.content);
    expect(partNumbers(texts)).toEqual(['0', '1', '2']);
    expect(texts[2]).toMatch(/reply 1/i);
    expect(wechat.calls.filter((c) => c.path === SEND && c.body.touser === openId).map((c) => c.answer)).toEqual([0, 0, 0]);
  });

  it('an answer job run again after it stored its answer does not ask Dify again, and the answer is pushed once', async () => {
    const openId = 'o_rerun';
    const query = slowQuery('rerun', 2900);
    const msgId = nextMsgId();
    const jobId = `m~default~${openId}~${msgId}`;
    // The push queue refuses the hand-over once (a string where BullMQ keeps the push job's hash):
    // the answer job fails after storing its answer, and BullMQ retries it.
    const blocker = `${stack.config.queuePrefix}:push:push~${jobId}~0`;
    await redis.set(blocker, 'in the way');
    const { delivery } = message(openId, query, msgId);
    expect((await delivery).accepted?.reply?.Content).toMatch(/taking a while/i);
    await eventually(async () => ((await queues.answer.getJob(jobId))?.attemptsMade ?? 0) >= 1, 8000);
    await redis.del(blocker);
    await eventually(() => wechat.textsTo(openId).length === 1, 8000);
    await sleep(1000);
    expect(wechat.textsTo(openId)).toEqual(['Echo: rerun']);
    expect(dify.runRequests().filter((r) => (r.body as { query: string }).query === query)).toHaveLength(1);
    expect(await queues.answer.getJobState(jobId)).toBe('completed');
  });

  // Last: it replaces the stack's worker.
  it('a worker shutting down mid-push stops between parts and hands the job back: the next worker sends the rest, once each', async () => {
    const openId = 'o_shutdown';
    dify.enqueue({ name: 'normal', answer: longAnswer(6) });
    wechat.slowPushWhen((m) => (m.touser === openId ? 600 : undefined));
    await message(openId, 'shutdown').delivery;
    await eventually(() => pushesTo(openId).length === 1, 5000);
    const closing = Date.now();
    await stack.workers[0]!.close(100);
    const closedIn = Date.now() - closing;
    const handedBack = pushesTo(openId).length;
    stack.workers[0] = await startWorker(stack.config, stack.logger.child({ svc: 'worker-next' }), { port: null });
    await eventually(() => pushesTo(openId).length === 5, 10_000);
    await sleep(1000);
    wechat.slowPushWhen(undefined);
    // The closing worker did not push the whole answer first (4 more parts × 600 ms).
    expect(closedIn).toBeLessThan(1500);
    expect(handedBack).toBeLessThan(3);
    expect(partNumbers(wechat.textsTo(openId))).toEqual(['1', '2', '3', '4', '5']);
  });
});

describe('customer-service pushes while WeChat refuses connections', () => {
  it('a push that could not connect gives its part and its allowance back: the part is sent once WeChat is back', async () => {
    const dify = await startFakeDify({ mode: 'chat', pingIntervalMs: 200 });
    const port = await freePort();
    const stack = await startStack(
      testEnv({ dify, wechatUrl: `http://127.0.0.1:${port}`, overrides: { ENABLE_CUSTOM_MESSAGE: 'true', LANGUAGE: 'en_US', WECHAT_TIMEOUT_MS: String(WINDOW), REPLY_MARGIN_MS: '100' } }),
    );
    const redis = new Redis(inject('redisUrl'));
    const prefix = stack.config.queuePrefix;
    const pushQueue = new Queue('push', { connection: redis, prefix });
    let wechat: FakeWeChat | undefined;
    try {
      // A cached token, so the push itself is what cannot connect.
      await redis.set(`${prefix}:token:${stack.config.accounts.get('default')!.appId}`, 'cached-token', 'EX', 600);
      const openId = 'o_refused';
      const msgId = nextMsgId();
      dify.enqueue({ name: 'normal', answer: longAnswer(3) });
      const sim = stack.simulator('plain');
      await sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: 'refused', MsgId: msgId }), WINDOW);
      const pushJobId = `push~m~default~${openId}~${msgId}~1`;
      await eventually(async () => ((await pushQueue.getJob(pushJobId))?.attemptsMade ?? 0) >= 1, 5000);
      expect(await redis.get(`${prefix}:quota:default:${openId}`)).toBe('5');
      wechat = await new FakeWeChat().start(port);
      await eventually(() => wechat!.textsTo(openId).length === 2, 8000);
      await sleep(500);
      expect(partNumbers(wechat.textsTo(openId))).toEqual(['1', '2']);
      expect(await redis.get(`${prefix}:quota:default:${openId}`)).toBe('3');
    } finally {
      await stack.close();
      await pushQueue.close();
      await Promise.all([dify.close(), wechat?.close(), redis.quit()]);
    }
  });
});
