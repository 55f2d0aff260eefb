import { beforeEach, describe, expect, it } from 'vitest';
import { startWorker } from '../apps/worker/src/index.js';
import { CANCEL_AFTER_MS } from '../apps/worker/src/typing.js';
import { testEnv } from './helpers/stack.js';
import { useFakeStack } from './helpers/fake-stack.js';
import { eventually, nextMsgId, slowQuery } from './helpers/wechat-timing.js';

// Customer-service pushes against WeChat's errcodes; WeChat's window shrunk to 1 s.
const WINDOW = 1000;
const SEND = '/cgi-bin/message/custom/send';

describe('customer-service pushes and WeChat errcodes', () => {
  const fx = useFakeStack({
    dify: { pingIntervalMs: 200 },
    env: ({ dify, wechat }) => testEnv({
      dify,
      wechatUrl: wechat.url,
      overrides: { ENABLE_CUSTOM_MESSAGE: 'true', LANGUAGE: 'en_US', WECHAT_TIMEOUT_MS: String(WINDOW), REPLY_MARGIN_MS: '100' },
    }),
    stack: { workerPort: 0 },
  });
  beforeEach(() => fx.wechat.failWhen(undefined));

  const late = (openId: string, text: string, delayMs = 2900) => {
    const sim = fx.stack.simulator('plain');
    return sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: slowQuery(text, delayMs), MsgId: nextMsgId() }), WINDOW);
  };
  const typingOf = (openId: string) =>
    fx.wechat.calls.filter((c) => c.path.endsWith('/custom/typing') && c.body.touser === openId).map((c) => c.body.command);
  const sends = (openId: string) => fx.wechat.calls.filter((c) => c.path === SEND && c.body.touser === openId);
  const one = (openId: string) => {
    const sim = fx.stack.simulator('plain');
    return sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: '1', MsgId: nextMsgId() }));
  };

  it('45015 (follower outside the 48 h window): the answer is dropped and logged, not retried', async () => {
    const openId = 'o_gone_48h';
    fx.wechat.failWhen((c) => (c.path === SEND && c.body.touser === openId ? 45015 : undefined));
    await late(openId, 'too late');
    await eventually(() => sends(openId).length === 1, 6000);
    await new Promise((r) => setTimeout(r, 1500));
    expect(sends(openId)).toHaveLength(1);
    expect(fx.wechat.textsTo(openId)).toEqual([]);
  });

  it('-1 (system busy): backs off and retries, and the follower gets the answer once', async () => {
    const openId = 'o_busy';
    let busy = 2;
    fx.wechat.failWhen((c) => (c.path === SEND && c.body.touser === openId && busy-- > 0 ? -1 : undefined));
    await late(openId, 'busy day');
    await eventually(() => fx.wechat.textsTo(openId).length === 1, 8000);
    expect(fx.wechat.textsTo(openId)).toEqual(['Echo: busy day']);
    expect(sends(openId)).toHaveLength(3);
  });

  it('45047 (push allowance used up): parts pushed so far stay, the rest waits for the follower and comes with `1`', async () => {
    const openId = 'o_quota';
    const long = Array.from({ length: 5 }, (_, i) => `${i} ${'y'.repeat(1500)}`).join('\n\n');
    fx.dify.enqueue({ name: 'normal', answer: long, delayMs: 2900 });
    let accepted = 0;
    fx.wechat.failWhen((c) => (c.path === SEND && c.body.touser === openId && ++accepted > 2 ? 45047 : undefined));
    await late(openId, 'long story');
    await eventually(() => sends(openId).length === 3, 8000);
    await new Promise((r) => setTimeout(r, 300));
    expect(fx.wechat.textsTo(openId).map((t) => t.slice(0, 2))).toEqual(['0 ', '1 ']);
    fx.wechat.failWhen(undefined);
    const next = await one(openId);
    expect(next.reply?.Content?.slice(0, 2)).toBe('2 ');
    // The `1` opened a new allowance: the last two parts follow as pushes, in order.
    await eventually(() => fx.wechat.textsTo(openId).length === 4, 5000);
    expect(fx.wechat.textsTo(openId).map((t) => t.slice(0, 2))).toEqual(['0 ', '1 ', '3 ', '4 ']);
  });

  it('a push job that fails mid-answer is retried from the part it stopped at: no part twice, in order', async () => {
    const openId = 'o_resume';
    const long = Array.from({ length: 3 }, (_, i) => `${i} ${'z'.repeat(1500)}`).join('\n\n');
    fx.dify.enqueue({ name: 'normal', answer: long, delayMs: 2900 });
    let failures = 0;
    // The second part fails with -1 more often than the client's own backoff absorbs: the job throws and BullMQ retries it.
    fx.wechat.failWhen((c) => (c.path === SEND && c.body.touser === openId && String((c.body.text as { content: string }).content).startsWith('1 ') && failures++ < 4 ? -1 : undefined));
    await late(openId, 'resume me');
    await eventually(() => fx.wechat.textsTo(openId).length === 3, 15_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(fx.wechat.textsTo(openId).map((t) => t.slice(0, 2))).toEqual(['0 ', '1 ', '2 ']);
  });

  it('refreshes "typing…" every 15 s while Dify works, and the pushed answer ends it', { timeout: 40_000 }, async () => {
    const openId = 'o_slow_typing';
    const delivery = await late(openId, 'very slow', 17_500);
    expect(delivery.accepted?.reply?.Content).toMatch(/taking a while/i);
    await eventually(() => fx.wechat.textsTo(openId).length === 1, 25_000);
    const typing = fx.wechat.calls.filter((c) => c.path.endsWith('/custom/typing') && c.body.touser === openId);
    expect(typing.map((c) => c.body.command)).toEqual(['Typing', 'Typing']);
    expect(typing[1]!.at - typing[0]!.at).toBeGreaterThanOrEqual(14_900);
    expect(typing[1]!.at).toBeLessThan(fx.wechat.pushed.find((m) => m.touser === openId)!.at);
  });

  it('withdraws "typing…" when the answer goes out passively after it was shown, and never shows it for a fast answer', async () => {
    const sim = fx.stack.simulator('plain');
    const ask = (openId: string, text: string, delayMs: number) =>
      sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: slowQuery(text, delayMs), MsgId: nextMsgId() }), WINDOW);
    // Typing starts at 1.5 s; this answer is ready at 2.3 s, for WeChat's third attempt.
    const slow = await ask('o_typing_passive', 'a bit slow', 2300);
    const repliedAt = Date.now();
    expect(slow.accepted?.reply?.Content).toBe('Echo: a bit slow');
    await eventually(() => typingOf('o_typing_passive').length === 2, 3000);
    expect(typingOf('o_typing_passive')).toEqual(['Typing', 'CancelTyping']);
    // The CancelTyping is a courtesy sent CANCEL_AFTER_MS after the answer, behind the deliveries of a burst.
    const cancelAt = fx.wechat.calls.find((c) => c.path.endsWith('/custom/typing') && c.body.touser === 'o_typing_passive' && c.body.command === 'CancelTyping')!.at;
    expect(cancelAt - repliedAt).toBeGreaterThanOrEqual(CANCEL_AFTER_MS - 200);
    const fast = await ask('o_typing_fast', 'quick', 200);
    expect(fast.accepted?.reply?.Content).toBe('Echo: quick');
    await new Promise((r) => setTimeout(r, 1800));
    expect(typingOf('o_typing_fast')).toEqual([]);
  });

  // Last: it switches the account to the waiting mode for the rest of this file.
  it('48001 (no customer-service permission): logged once, reported in metrics by every worker, and the account switches to the waiting mode', async () => {
    const openId = 'o_no_permission';
    fx.wechat.failWhen((c) => (c.path === SEND ? 48001 : undefined));
    const first = await late(openId, 'no permission');
    expect(first.accepted?.reply?.Content).toMatch(/taking a while/i);
    await eventually(() => sends(openId).length === 1, 6000);
    // The answer is not lost: the follower's `1` fetches it.
    await new Promise((r) => setTimeout(r, 200));
    expect((await one(openId)).reply?.Content).toBe('Echo: no permission');
    // The next late answer is handled in waiting mode from the start.
    const second = await late('o_no_permission_2', 'waiting now');
    expect(second.accepted?.reply?.Content).toMatch(/reply 1/i);
    const metrics = await (await fetch(`${fx.stack.workers[0]!.url}/metrics`)).text();
    expect(metrics).toMatch(/wxdify_custom_service_blocked\{account="default",component="worker"\} 1/);
    expect(metrics).toMatch(/wxdify_wechat_api_errors_total\{errcode="48001",component="worker"\} [1-9]/);
    // A worker that never met the 48001 (another replica, or this one restarted) reports it too: the switch is in Redis.
    const fresh = await startWorker(fx.stack.config, fx.stack.logger, { port: 0, host: '127.0.0.1' });
    try {
      const freshMetrics = await (await fetch(`${fresh.url}/metrics`)).text();
      expect(freshMetrics).toMatch(/wxdify_custom_service_blocked\{account="default",component="worker"\} 1/);
    } finally {
      await fresh.close(1000);
    }
    // While WeChat refuses the account, "typing…" is not even tried (the call would fail too), though this answer took 2.9 s.
    expect((await one('o_no_permission_2')).reply?.Content).toBe('Echo: waiting now');
    expect(typingOf('o_no_permission_2')).toEqual([]);
  });
});
