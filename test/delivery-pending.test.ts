import { describe, expect, it } from 'vitest';
import { DeliveryStore, pushAllowanceFor, utf8Length } from '../packages/core/src/index.js';
import { testEnv } from './helpers/stack.js';
import { useFakeStack } from './helpers/fake-stack.js';
import { metricDelta, metricValue, scrapeMetrics } from './helpers/metrics.js';
import { difyCallsFor, eventually, nextMsgId, sendText, slowQuery, twoModesConfigFile } from './helpers/wechat-timing.js';

// WeChat's 5 s shrunk to 1 s: attempts at t = 0, 1, 2 s; the first waits 0.9 s, retries 0.7 s
// (0.3 s on `quick`); the due sweep hands over what no attempt took at 4.5 s.
const WINDOW = 1000;

/** A part's text without the "Reply 1 for the next part" notice. */
const withoutNotice = (text: string) => text.replace(/\n\n[^\n]*reply 1[^\n]*$/i, '');

describe('pending answers and hand-overs (1 s window)', () => {
  // `push` and `wait`, and `quick`: waiting mode with RETRY_WAIT_TIMEOUT_RATIO 0.3.
  const fx = useFakeStack({
    dify: { pingIntervalMs: 200 },
    env: ({ dify, wechat }) => {
      const config = twoModesConfigFile(dify, wechat.url, { maxContinueCount: 2, welcomeMessage: 'Welcome aboard' }, [
        { id: 'quick', enableCustomMessage: false, retryWaitTimeoutRatio: 0.3 },
      ]);
      return testEnv({ dify, overrides: { CONFIG_FILE: config, WECHAT_TIMEOUT_MS: String(WINDOW), REPLY_MARGIN_MS: '100' } });
    },
  });

  const send = (account: string, openId: string, content: string, msgId?: string) => sendText(fx.stack, WINDOW, account, openId, content, msgId);
  const reply = async (account: string, openId: string, content: string) => (await send(account, openId, content).delivery).accepted?.reply?.Content ?? '';
  const metrics = async () => scrapeMetrics(fx.stack.ingress.url);
  const difyCalls = (query: string) => difyCallsFor(fx.dify, query);

  it('waiting mode: a burst of three late answers all reach the follower through `1`, once each, in order', async () => {
    const openId = 'o_burst_late';
    // Each answer comes after its message's last attempt (the first at 3.2 s, then 3.5 s, 3.8 s).
    const queries = [slowQuery('a', 3200), slowQuery('b', 300), slowQuery('c', 300)];
    const deliveries = [];
    for (const q of queries) {
      deliveries.push(send('wait', openId, q).delivery);
      await new Promise((r) => setTimeout(r, 5));
    }
    const results = await Promise.all(deliveries);
    for (const r of results) expect(r.accepted?.reply?.Content).toMatch(/reply 1/i);
    const answers: string[] = [];
    for (let i = 0; i < 8 && answers.length < 3; i++) {
      const text = await reply('wait', openId, '1');
      if (text.startsWith('Echo:')) answers.push(text);
    }
    expect(answers).toEqual(['Echo: a', 'Echo: b', 'Echo: c']);
    // Nothing is left: the next `1` is an ordinary message.
    expect(await reply('wait', openId, '1')).toBe('Echo: 1');
    expect(fx.wechat.textsTo(openId)).toHaveLength(0);
    for (const q of queries) expect(difyCalls(q)).toBe(1);
  });

  it("customer-service mode: the leftover parts of two long answers both stay reachable with `1`", async () => {
    const openId = 'o_two_long';
    const longOf = (tag: string) => Array.from({ length: 8 }, (_, i) => `${tag}${i} ${'x'.repeat(1500)}`).join('\n\n');
    const seen: { at: number; text: string }[] = [];
    for (const tag of ['A', 'B']) {
      const pushedBefore = fx.wechat.textsTo(openId).length;
      fx.dify.enqueue({ name: 'normal', answer: longOf(tag) });
      const result = await send('push', openId, `long ${tag}`).delivery;
      seen.push({ at: Date.now(), text: result.accepted!.reply!.Content! });
      // The first part went passively, then WeChat's allowance of 5 pushes; 2 parts are left.
      await eventually(() => fx.wechat.textsTo(openId).length >= pushedBefore + 5 || undefined);
      await new Promise((r) => setTimeout(r, 150));
    }
    for (let i = 0; i < 10; i++) {
      const text = await reply('push', openId, '1');
      if (text.startsWith('Echo: 1')) break;
      seen.push({ at: Date.now(), text });
      await new Promise((r) => setTimeout(r, 200));
    }
    seen.push(...fx.wechat.pushed.filter((m) => m.touser === openId).map((m) => ({ at: m.at, text: m.text!.content })));
    seen.sort((a, b) => a.at - b.at);
    const tags = seen.map(({ text }) => withoutNotice(text).split(' ')[0]);
    const expected = ['A', 'B'].flatMap((t) => Array.from({ length: 8 }, (_, i) => `${t}${i}`));
    expect([...tags].sort()).toEqual(expected); // every part of both answers, none twice
    for (const t of ['A', 'B']) expect(tags.filter((x) => x!.startsWith(t))).toEqual(expected.filter((x) => x.startsWith(t)));
  });

  it.each([
    ['wait', /reply 1/i],
    ['push', /taking a while/i],
  ] as const)('a last attempt that arrives after the due sweep handed the answer over says where it went (%s mode)', async (account, expected) => {
    const openId = `o_after_sweep_${account}`;
    const sim = fx.stack.simulator('safe', account);
    const xml = sim.messageXml(openId, { MsgType: 'text', Content: slowQuery(`swept ${account}`, 2000), MsgId: nextMsgId() });
    expect((await sim.attempt(xml, WINDOW)).status).toBe(503);
    expect((await sim.attempt(xml, WINDOW)).status).toBe(503);
    // WeChat's third attempt is lost on the way until after the sweep (4.5 s) handed the answer over.
    const key = `${fx.stack.config.queuePrefix}:msg:m~${account}~${openId}~${xml.match(/<MsgId>(\d+)</)![1]}`;
    await eventually(async () => ((await fx.redis.hget(key, 'state')) === account ? true : undefined), 8000);
    const third = await sim.attempt(xml, WINDOW);
    expect(third.status).toBe(200);
    expect(third.reply?.Content).toMatch(expected);
    if (account === 'push') {
      await eventually(() => fx.wechat.textsTo(openId)[0]);
      expect(fx.wechat.textsTo(openId)).toEqual([`Echo: swept ${account}`]);
    } else {
      expect(await reply(account, openId, '1')).toBe(`Echo: swept ${account}`);
    }
  });

  it('a push hand-over whose process died before queuing the push is pushed by the next sweep', async () => {
    const openId = 'o_crashed_sweeper';
    const jobId = `m~push~${openId}~${nextMsgId()}`;
    const store = new DeliveryStore(fx.redis, fx.stack.config.queuePrefix);
    await store.recordAttempt(jobId, { account: 'push', openId, queued: false, allowance: pushAllowanceFor({ kind: 'text' }) }, Date.now() - 20_000);
    await store.saveAnswer(jobId, { parts: [{ type: 'text', text: 'survived' }], readyAt: Date.now() }, { account: 'push', openId, dueAfterMs: 16_500 });
    // A sweeper hands it over, then dies before enqueueing the push.
    expect(await store.settle(jobId, 'handoff', 'push', { follower: { account: 'push', openId } })).toMatchObject({ state: 'push', won: true });
    expect(await fx.redis.zscore(store.dueKey, jobId)).not.toBeNull();
    // Its grace period is over (instead of waiting 10 s): the running worker's sweep pushes it, once.
    await fx.redis.zadd(store.dueKey, Date.now(), jobId);
    await eventually(() => fx.wechat.textsTo(openId)[0], 3000);
    await new Promise((r) => setTimeout(r, 1200));
    expect(fx.wechat.textsTo(openId)).toEqual(['survived']);
    expect(await fx.redis.zscore(store.dueKey, jobId)).toBeNull();
  });

  it.each([
    ['wait', 0.7],
    ['quick', 0.3],
  ] as const)('RETRY_WAIT_TIMEOUT_RATIO decides when a retry gives up (%s: %s)', async (account, ratio) => {
    const { delivery } = send(account, `o_ratio_${account}`, slowQuery(`ratio ${account}`, 3000));
    const result = await delivery;
    expect(result.attempts.map((a) => a.status)).toEqual([503, 503, 200]);
    // The first attempt uses the whole window less the margin; retries give up at ratio × window.
    expect(result.attempts[0]!.ms).toBeGreaterThanOrEqual(WINDOW - 100 - 5);
    for (const retry of [result.attempts[1]!, result.attempts[2]!]) {
      expect(retry.ms).toBeGreaterThanOrEqual(ratio * WINDOW - 5);
      expect(retry.ms).toBeLessThan(ratio * WINDOW + 150);
    }
  });

  it('waiting mode: a 20,000-byte answer reaches the follower part by part through `1`, in order, each within 2048 bytes, none twice', async () => {
    const openId = 'o_long_wait_20k';
    const paragraph = `${'长'.repeat(330)} Lorem ipsum dolor sit amet. `;
    const long = Array.from({ length: 20 }, (_, i) => `${i} ${paragraph}`).join('\n\n');
    expect(utf8Length(long)).toBeGreaterThan(20_000);
    fx.dify.enqueue({ name: 'normal', answer: long });
    const before = await metrics();
    const texts = [await reply('wait', openId, 'everything please')];
    for (let i = 0; i < 30; i++) {
      const text = await reply('wait', openId, '1');
      if (text === 'Echo: 1') break;
      texts.push(text);
    }
    for (const text of texts) expect(utf8Length(text)).toBeLessThanOrEqual(2048);
    expect(texts.length).toBeGreaterThan(10);
    expect(texts.map(withoutNotice).join('').replace(/\s/g, '')).toBe(long.replace(/\s/g, ''));
    expect(fx.wechat.textsTo(openId)).toHaveLength(0);
    // One answer delivered (its first part, passively) and the last `1`, an ordinary message once
    // nothing was left: the later parts are not more answers.
    const after = await metrics();
    const delivered = (path: string) => metricValue(after, 'wxdify_answers_delivered_total', `account="wait",path="${path}"`) - metricValue(before, 'wxdify_answers_delivered_total', `account="wait",path="${path}"`);
    expect(delivered('passive_1')).toBe(2);
    expect(delivered('fetched')).toBe(0);
  });

  it('an answer fetched with `1` is counted once, with its latency from the message’s first arrival', async () => {
    const openId = 'o_fetched_metrics';
    const before = await metrics();
    const started = Date.now();
    expect(await reply('wait', openId, slowQuery('fetch me', 2900))).toMatch(/reply 1/i);
    expect(await reply('wait', openId, '1')).toBe('Echo: fetch me');
    const elapsed = (Date.now() - started) / 1000;
    const after = await metrics();
    const delta = metricDelta(before, after);
    expect(delta('wxdify_answers_delivered_total', 'account="wait",path="fetched"')).toBe(1);
    expect(delta('wxdify_answer_latency_seconds_count', 'path="fetched"')).toBe(1);
    const latency = delta('wxdify_answer_latency_seconds_sum', 'path="fetched"');
    expect(latency).toBeGreaterThan(2.9);
    expect(latency).toBeLessThanOrEqual(elapsed + 0.05);
    // The message and the `1`: two messages received.
    expect(delta('wxdify_messages_received_total', 'account="wait",type="text"')).toBe(2);
  });

  it('WeChat retries of /clear, a welcome and a silent event are not counted as new messages', async () => {
    const sim = fx.stack.simulator('safe', 'wait');
    const openId = 'o_retried_commands';
    const before = await metrics();
    const clear = sim.messageXml(openId, { MsgType: 'text', Content: '/clear', MsgId: nextMsgId() });
    const welcome = sim.messageXml(openId, { MsgType: 'event', Event: 'subscribe' }, 1_700_000_500);
    const view = sim.messageXml(openId, { MsgType: 'event', Event: 'VIEW', EventKey: 'https://example.com' }, 1_700_000_600);
    for (const xml of [clear, welcome, view]) {
      const [first, retry] = [await sim.attempt(xml, WINDOW), await sim.attempt(xml, WINDOW)];
      expect(first.status).toBe(200);
      expect([retry.status, retry.reply?.Content]).toEqual([first.status, first.reply?.Content]);
    }
    const after = await metrics();
    const delta = metricDelta(before, after);
    for (const type of ['text', 'event:subscribe', 'event:VIEW']) {
      expect(delta('wxdify_messages_received_total', `account="wait",type="${type}"`), type).toBe(1);
    }
    expect(delta('wxdify_wechat_attempts_total', 'attempt="2",outcome="reply"')).toBe(2);
    expect(delta('wxdify_wechat_attempts_total', 'attempt="2",outcome="success"')).toBe(1);
  });
});
