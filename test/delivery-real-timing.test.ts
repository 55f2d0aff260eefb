import { describe, expect, it } from 'vitest';
import { testEnv } from './helpers/stack.js';
import { useFakeStack } from './helpers/fake-stack.js';
import { eventually, nextMsgId, slowQuery, twoModesConfigFile } from './helpers/wechat-timing.js';

// WeChat's real clock: attempts at t = 0, 5, 10 s, each cut at 5 s. All six followers run at once.
describe("delivery on WeChat's real 5 s clock", () => {
  const fx = useFakeStack({
    dify: { pingIntervalMs: 1000 },
    env: ({ dify, wechat }) => testEnv({ dify, overrides: { CONFIG_FILE: twoModesConfigFile(dify, wechat.url) } }),
  });

  it('answers at 7 s, 12 s and 20 s reach the follower exactly once, in each mode', { timeout: 60_000 }, async () => {
    const started = Date.now();
    const follower = async (account: 'push' | 'wait', seconds: number) => {
      const openId = `o_real_${account}_${seconds}`;
      const sim = fx.stack.simulator('safe', account);
      const xml = sim.messageXml(openId, { MsgType: 'text', Content: slowQuery(`${account} ${seconds}s`, seconds * 1000), MsgId: nextMsgId() });
      const result = await sim.deliver(xml);
      return { account, seconds, openId, result, doneAt: Date.now() - started };
    };
    const runs = await Promise.all((['push', 'wait'] as const).flatMap((a) => [7, 12, 20].map((s) => follower(a, s))));

    for (const run of runs) {
      const { result } = run;
      // No response ever leaves after WeChat's 5 s.
      for (const attempt of result.attempts) expect(attempt.ms).toBeLessThan(5000);
      expect(result.accepted, `${run.account} ${run.seconds}s accepted`).toBeDefined();
      const expected = `Echo: ${run.account} ${run.seconds}s`;
      if (run.seconds === 7) {
        expect(result.accepted!.attempt).toBe(2);
        expect(result.accepted!.reply?.Content).toBe(expected);
      } else if (run.seconds === 12) {
        expect(result.accepted!.attempt).toBe(3);
        expect(result.accepted!.reply?.Content).toBe(expected);
      } else {
        expect(result.accepted!.attempt).toBe(3);
        expect(result.accepted!.reply?.Content).not.toBe(expected);
      }
    }

    // 20 s, customer-service mode: the timeout notice, then the answer pushed once.
    const push20 = runs.find((r) => r.account === 'push' && r.seconds === 20)!;
    expect(push20.result.accepted!.reply?.Content).toMatch(/taking a while/i);
    await eventually(() => fx.wechat.textsTo(push20.openId).length > 0, 15_000);
    expect(fx.wechat.textsTo(push20.openId)).toEqual(['Echo: push 20s']);

    // 20 s, waiting mode: asked to send 1; a `1` sent at ~16 s gets it when it exists.
    const wait20 = runs.find((r) => r.account === 'wait' && r.seconds === 20)!;
    expect(wait20.result.accepted!.reply?.Content).toMatch(/reply 1/i);
    await new Promise((r) => setTimeout(r, Math.max(0, 16_000 - (Date.now() - started))));
    const sim = fx.stack.simulator('safe', 'wait');
    const one = await sim.deliver(sim.messageXml(wait20.openId, { MsgType: 'text', Content: '1', MsgId: nextMsgId() }));
    expect(one.accepted?.attempt).toBe(1);
    expect(one.accepted?.reply?.Content).toBe('Echo: wait 20s');

    // Nothing else was pushed to anyone, and Dify saw each message once.
    expect(fx.wechat.pushed.map((m) => m.touser)).toEqual([push20.openId]);
    expect(fx.dify.runRequests()).toHaveLength(6);
  });
});
