import { createHash } from 'node:crypto';
import { Queue } from 'bullmq';
import { describe, expect, inject, it } from 'vitest';
import { utf8Length } from '../packages/core/src/index.js';
import { ATTEMPT_LUA, SETTLE_LUA } from '../packages/core/src/delivery-scripts.js';
import { watchCommands } from './helpers/redis-server.js';
import { testEnv } from './helpers/stack.js';
import { useFakeStack } from './helpers/fake-stack.js';
import { answerReadyAt, difyCallsFor, eventually, nextMsgId, sendText, slowQuery, twoModesConfigFile } from './helpers/wechat-timing.js';

// WeChat's 5 s shrunk to 1 s: attempts at t = 0, 1, 2 s; the first waits 0.9 s, retries 0.7 s.
const WINDOW = 1000;

describe("delivery across WeChat's retries (1 s window)", () => {
  const fx = useFakeStack({
    dify: { pingIntervalMs: 200 },
    env: ({ dify, wechat }) => {
      const config = twoModesConfigFile(dify, wechat.url, { maxContinueCount: 2 });
      return testEnv({ dify, overrides: { CONFIG_FILE: config, WECHAT_TIMEOUT_MS: String(WINDOW), REPLY_MARGIN_MS: '100' } });
    },
  });

  const send = (account: string, openId: string, content: string, msgId?: string) => sendText(fx.stack, WINDOW, account, openId, content, msgId);
  const difyCalls = (query: string) => difyCallsFor(fx.dify, query);

  it.each(['push', 'wait'])('returns an answer that is ready during the second attempt at once (%s mode)', async (account) => {
    const openId = `o_second_${account}`;
    const query = slowQuery(`second ${account}`, 1300);
    const { msgId, delivery } = send(account, openId, query);
    const result = await delivery;
    const receivedAt = Date.now();
    expect(result.attempts.map((a) => a.status)).toEqual([503, 200]);
    expect(result.accepted?.reply?.Content).toBe(`Echo: second ${account}`);
    // Returned well under 100 ms after the worker stored it, not at a poll tick.
    const ready = await answerReadyAt(fx.redis, fx.stack.config.queuePrefix, account, openId, msgId);
    expect(receivedAt - ready).toBeLessThan(100);
    expect(result.attempts[0]!.ms).toBeLessThan(WINDOW);
    expect(difyCalls(query)).toBe(1);
  });

  it.each(['push', 'wait'])('returns an answer that finished between attempts as soon as the next attempt arrives (%s mode)', async (account) => {
    const openId = `o_between_${account}`;
    const query = slowQuery(`between ${account}`, 1800);
    const { delivery } = send(account, openId, query);
    const result = await delivery;
    expect(result.attempts.map((a) => a.status)).toEqual([503, 503, 200]);
    expect(result.accepted?.reply?.Content).toBe(`Echo: between ${account}`);
    expect(result.accepted!.ms).toBeLessThan(100);
  });

  it('customer-service mode: the last attempt answers TIMEOUT_MESSAGE, the answer is pushed the moment it exists, with typing shown meanwhile', async () => {
    const openId = 'o_late_push';
    const query = slowQuery('late push', 4000);
    const { msgId, delivery } = send('push', openId, query);
    const result = await delivery;
    expect(result.attempts.map((a) => a.status)).toEqual([503, 503, 200]);
    expect(result.accepted?.reply?.Content).toMatch(/taking a while/i);
    const pushed = await eventually(() => fx.wechat.pushed.find((m) => m.touser === openId), 8000);
    expect(pushed.text?.content).toBe('Echo: late push');
    const ready = await answerReadyAt(fx.redis, fx.stack.config.queuePrefix, 'push', openId, msgId);
    expect(pushed.at - ready).toBeLessThan(100);
    expect(fx.wechat.textsTo(openId)).toHaveLength(1);
    // "typing…" was shown while Dify worked; the pushed answer itself ends it (WeChat's rule), and it is not shown again.
    const typing = fx.wechat.calls.filter((c) => c.path.endsWith('/custom/typing') && c.body.touser === openId);
    expect(typing.map((c) => c.body.command)).toEqual(['Typing']);
    expect(typing[0]!.at).toBeLessThan(pushed.at);
    expect(difyCalls(query)).toBe(1);
  });

  it('waiting mode: the last attempt asks for `1`; `1` waits on the answer without reaching Dify and returns it', async () => {
    const openId = 'o_late_wait';
    const query = slowQuery('late wait', 3500);
    const { delivery } = send('wait', openId, query);
    const result = await delivery;
    expect(result.accepted?.reply?.Content).toMatch(/reply 1/i);
    expect(result.accepted?.reply?.Content).toContain('2');
    const before = fx.dify.runRequests().length;
    const one = await send('wait', openId, '1').delivery;
    expect(one.attempts).toHaveLength(1);
    expect(one.accepted?.reply?.Content).toBe('Echo: late wait');
    expect(fx.dify.runRequests().length).toBe(before);
    expect(fx.wechat.textsTo(openId)).toHaveLength(0);
  });

  it('waiting mode: after MAX_CONTINUE_COUNT the follower is told it is still coming, and a later `1` still returns it', async () => {
    const openId = 'o_patient';
    const query = slowQuery('patience', 6500);
    const result = await send('wait', openId, query).delivery;
    expect(result.accepted?.reply?.Content).toMatch(/reply 1/i);
    const first = await send('wait', openId, '1').delivery; // waits 0.9 s, count 1 of 2
    expect(first.accepted?.reply?.Content).toMatch(/1 more/i);
    const second = await send('wait', openId, '1').delivery; // count 2 of 2
    expect(second.accepted?.reply?.Content).toMatch(/still/i);
    const third = await send('wait', openId, '1').delivery; // beyond the count: answered at once
    expect(third.accepted?.reply?.Content).toMatch(/still/i);
    expect(third.accepted!.ms).toBeLessThan(200);
    await new Promise((r) => setTimeout(r, 2500));
    const later = await send('wait', openId, '1').delivery;
    expect(later.accepted?.reply?.Content).toBe('Echo: patience');
    expect(difyCalls(query)).toBe(1);
  });

  it('a `1` with nothing pending is an ordinary message for Dify', async () => {
    const openId = 'o_plain_one';
    const result = await send('wait', openId, '1').delivery;
    expect(result.accepted?.reply?.Content).toBe('Echo: 1');
  });

  it('processes a burst of three messages from one follower one at a time, in order, in one conversation, without holding up others', async () => {
    const openId = 'o_burst';
    const queries = [slowQuery('one', 300), slowQuery('two', 300), slowQuery('three', 300)];
    // Message ids in the opposite order of the sends, a few ms apart: the line follows arrival.
    const msgIds = queries.map(() => nextMsgId()).reverse();
    const deliveries = [];
    for (const [i, q] of queries.entries()) {
      deliveries.push(send('wait', openId, q, msgIds[i]).delivery);
      await new Promise((r) => setTimeout(r, 5));
    }
    await new Promise((r) => setTimeout(r, 50));
    const other = send('wait', 'o_bystander', slowQuery('bystander', 0)).delivery;
    const results = await Promise.all([...deliveries, other]);
    expect(results.map((r) => r.accepted?.reply?.Content)).toEqual(['Echo: one', 'Echo: two', 'Echo: three', 'Echo: bystander']);
    const runs = fx.dify.runRequests().filter((r) => (r.body as { user: string }).user === openId);
    expect(runs.map((r) => (r.body as { query: string }).query)).toEqual(queries);
    // One at a time: each request started after the previous one's stream ended.
    for (let i = 1; i < runs.length; i++) expect(runs[i]!.at).toBeGreaterThanOrEqual(runs[i - 1]!.at + 300);
    // One conversation: the second and third carry the first one's id.
    const conversation = fx.dify.conversationIds(openId);
    expect(conversation).toHaveLength(1);
    expect(runs.slice(1).map((r) => (r.body as { conversation_id?: string }).conversation_id)).toEqual([conversation[0], conversation[0]]);
    // The bystander was not held up behind the burst.
    const bystander = fx.dify.runRequests().find((r) => (r.body as { user: string }).user === 'o_bystander')!;
    expect(bystander.at).toBeLessThan(runs[2]!.at);
  });

  it('answers a message that heads its line, ready while its attempt waits, with no round trip beyond the attempt, the job and the answer', async () => {
    const prefix = fx.stack.config.queuePrefix;
    const openId = 'o_head_of_line';
    const watched = new Set([`${prefix}:order:wait:${openId}`, `${prefix}:conv:wait:${openId}`]);
    const sha = (lua: string) => createHash('sha1').update(lua).digest('hex');
    const scripts = new Map([[sha(ATTEMPT_LUA), 'attempt'], [sha(SETTLE_LUA), 'settle']]);
    // Commands clients send (not those run inside Lua scripts): reads of the follower's line or
    // conversation, and runs of the attempt and settle scripts on this follower's messages.
    const seen: string[] = [];
    const monitor = await watchCommands(inject('redisUrl'), ({ args, source }) => {
      if (source === 'lua') return;
      if (watched.has(args[1] ?? '')) seen.push(`${args[0]!.toLowerCase()} ${args[1]}`);
      const script = scripts.get(args[1] ?? '');
      if (args[0]?.toLowerCase() === 'evalsha' && script && args[3]?.includes(openId)) seen.push(script);
    });
    try {
      const first = await send('wait', openId, slowQuery('head one', 0)).delivery;
      expect(first.accepted?.reply?.Content).toBe('Echo: head one');
      // The conversation Dify opened was saved (in a script): the next message carries it.
      const second = await send('wait', openId, slowQuery('head two', 0)).delivery;
      expect(second.accepted?.reply?.Content).toBe('Echo: head two');
      const runs = fx.dify.runRequests().filter((r) => (r.body as { user: string }).user === openId);
      expect((runs[1]!.body as { conversation_id?: string }).conversation_id).toBe(fx.dify.conversationIds(openId)[0]);
      // The worker did not look at the line or the conversation (the attempt script told the job),
      // and the attempt did not settle (the script storing the answer granted it to the attempt).
      expect(seen).toEqual(['attempt', 'attempt']);
      // A message queued behind another one checks its turn when it runs: the watch sees that.
      const behind = [send('wait', openId, slowQuery('head three', 300)), send('wait', openId, slowQuery('head four', 0))];
      await Promise.all(behind.map((b) => b.delivery));
      expect(seen).toContain(`zrange ${prefix}:order:wait:${openId}`);
      expect(seen).toContain(`hmget ${prefix}:conv:wait:${openId}`);
    } finally {
      monitor.stop();
    }
  });

  it("a retry of a message whose answer is stored does not add its job again, even once BullMQ has dropped it", async () => {
    const openId = 'o_dropped_job';
    const query = slowQuery('dropped job', 1100);
    const msgId = nextMsgId();
    const sim = fx.stack.simulator('safe', 'wait');
    const xml = sim.messageXml(openId, { MsgType: 'text', Content: query, MsgId: msgId });
    // WeChat's first attempt gives up (the answer takes 1.1 s); the answer is stored after it.
    expect((await sim.attempt(xml, WINDOW)).status).toBe(503);
    const jobId = `m~wait~${openId}~${msgId}`;
    const prefix = fx.stack.config.queuePrefix;
    const queue = new Queue('answer', { connection: fx.redis.duplicate({ maxRetriesPerRequest: null }), prefix });
    try {
      await eventually(async () => ((await queue.getJobState(jobId)) === 'completed' ? true : undefined));
      // BullMQ's retention (an hour, at most 10,000 jobs) drops it: on a busy account within seconds.
      await queue.remove(jobId);
      const retry = await sim.attempt(xml, WINDOW);
      expect(retry.reply?.Content).toBe('Echo: dropped job');
      await new Promise((r) => setTimeout(r, 300));
      expect(await queue.getJobState(jobId)).toBe('unknown');
      expect(difyCalls(query)).toBe(1);
    } finally {
      await queue.close();
    }
  });

  it('deduplicates events: the same subscribe delivered twice reaches Dify once', async () => {
    const sim = fx.stack.simulator('plain', 'wait');
    const xml = sim.messageXml('o_event_dup', { MsgType: 'event', Event: 'subscribe' }, 1_700_000_123);
    const [a, b] = await Promise.all([sim.attempt(xml), sim.attempt(xml)]);
    expect(a.reply?.Content).toBe(b.reply?.Content);
    expect(fx.dify.runRequests().filter((r) => (r.body as { user: string }).user === 'o_event_dup')).toHaveLength(1);
  });

  it('/clear and the CLEAR_CONTEXT menu key start a new conversation and answer in the configured language', async () => {
    const openId = 'o_clearer';
    await send('wait', openId, 'remember me').delivery;
    const cleared = await send('wait', openId, '/clear').delivery;
    expect(cleared.accepted?.reply?.Content).toMatch(/new conversation|cleared/i);
    await send('wait', openId, 'who am i').delivery;
    const sim = fx.stack.simulator('plain', 'wait');
    const click = await sim.attempt(sim.messageXml(openId, { MsgType: 'event', Event: 'CLICK', EventKey: 'CLEAR_CONTEXT' }));
    expect(click.reply?.Content).toBe(cleared.accepted?.reply?.Content);
    await send('wait', openId, 'and now').delivery;
    const runs = fx.dify.runRequests().filter((r) => (r.body as { user: string }).user === openId).map((r) => r.body as { conversation_id?: string });
    expect(runs).toHaveLength(3);
    expect(runs.every((r) => !r.conversation_id)).toBe(true);
  });

  it('customer-service mode: a 20,000-byte answer goes out as ≤2048-byte parts, first passively, then 5 pushes, the rest for `1`', async () => {
    const openId = 'o_long_push';
    const paragraph = `${'长'.repeat(330)} Lorem ipsum dolor sit amet. `;
    const long = Array.from({ length: 20 }, (_, i) => `${i} ${paragraph}`).join('\n\n');
    fx.dify.enqueue({ name: 'normal', answer: long });
    const result = await send('push', openId, 'tell me everything').delivery;
    expect(result.attempts).toHaveLength(1);
    const first = result.accepted!.reply!.Content!;
    const pushed = await eventually(() => (fx.wechat.textsTo(openId).length >= 5 ? fx.wechat.textsTo(openId) : undefined));
    await new Promise((r) => setTimeout(r, 200));
    expect(fx.wechat.textsTo(openId)).toHaveLength(5); // WeChat's allowance per follower message
    expect(pushed.at(-1)).toMatch(/reply 1/i);
    // What the follower sees, in time order: passive replies (to the message and to each `1`) and pushes.
    const seen: { at: number; text: string }[] = [{ at: 0, text: first }];
    for (let i = 0; i < 20; i++) {
      const one = await send('push', openId, '1').delivery;
      const text = one.accepted?.reply?.Content ?? '';
      if (text.startsWith('Echo: 1')) break; // nothing left: an ordinary message again
      seen.push({ at: Date.now(), text });
      await new Promise((r) => setTimeout(r, 300));
    }
    seen.push(...fx.wechat.pushed.filter((m) => m.touser === openId).map((m) => ({ at: m.at, text: m.text!.content })));
    seen.sort((a, b) => a.at - b.at);
    for (const { text } of seen) expect(utf8Length(text)).toBeLessThanOrEqual(2048);
    expect(utf8Length(long)).toBeGreaterThan(20_000);
    const received = seen.map(({ text }) => text.replace(/\n\n[^\n]*reply 1[^\n]*$/i, '')).join('').replace(/\s/g, '');
    expect(received === long.replace(/\s/g, ''), 'the parts, in the order received, rebuild the answer').toBe(true);
  });

  it('waiting mode: a long answer comes part by part with `1`, each telling how many remain', async () => {
    const openId = 'o_long_wait';
    const long = Array.from({ length: 6 }, (_, i) => `${i} ${'x'.repeat(1500)}`).join('\n\n');
    fx.dify.enqueue({ name: 'normal', answer: long });
    const result = await send('wait', openId, 'long please').delivery;
    const parts = [result.accepted!.reply!.Content!];
    expect(parts[0]).toMatch(/\(5 parts\)/);
    for (let i = 0; i < 5; i++) parts.push((await send('wait', openId, '1').delivery).accepted!.reply!.Content!);
    expect(parts[5]).not.toMatch(/reply 1/i);
    expect(parts.map((p) => p.split('\n\n')[0]!.slice(0, 2))).toEqual(['0 ', '1 ', '2 ', '3 ', '4 ', '5 ']);
    expect(fx.wechat.textsTo(openId)).toHaveLength(0);
    expect((await send('wait', openId, '1').delivery).accepted?.reply?.Content).toBe('Echo: 1');
  });
});
