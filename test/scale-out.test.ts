import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { simulatorFor, startProcess, type ServiceProcess } from './helpers/processes.js';
import { testEnv } from './helpers/stack.js';
import { eventually, nextMsgId, slowQuery } from './helpers/wechat-timing.js';

// Two ingress and two worker processes (the production entry points) on one Redis, WeChat's
// window shrunk to 1 s, customer-service mode on.
const WINDOW = 1000;
const SEND = '/cgi-bin/message/custom/send';

describe('replicas on one Redis', () => {
  let dify: FakeDify;
  let wechat: FakeWeChat;
  let env: Record<string, string>;
  const procs: ServiceProcess[] = [];
  let ingresses: ServiceProcess[];
  let workers: ServiceProcess[];

  const simFor = (ingress: ServiceProcess) => simulatorFor(ingress, 'safe');
  const runsFor = (openId: string) => dify.runRequests().filter((r) => (r.body as { user: string }).user === openId);

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', pingIntervalMs: 500 });
    wechat = await new FakeWeChat().start();
    env = testEnv({
      dify,
      wechatUrl: wechat.url,
      overrides: { ENABLE_CUSTOM_MESSAGE: 'true', WECHAT_TIMEOUT_MS: String(WINDOW), REPLY_MARGIN_MS: '100', LOG_LEVEL: 'info' },
    });
    const started = await Promise.all([
      startProcess('ingress', env),
      startProcess('ingress', env),
      startProcess('worker', env),
      startProcess('worker', env),
    ]);
    procs.push(...started);
    ingresses = started.slice(0, 2);
    workers = started.slice(2);
  });
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()));
    await Promise.all([dify.close(), wechat.close()]);
  });

  it("attaches attempts that land on different ingress replicas to one job: one Dify call, the answer on the retry's replica", async () => {
    const [a, b] = ingresses as [ServiceProcess, ServiceProcess];
    const xml = simFor(a).messageXml('o_two_replicas', { MsgType: 'text', Content: slowQuery('across replicas', 1200), MsgId: nextMsgId() });
    const first = await simFor(a).attempt(xml, WINDOW);
    expect(first.status).toBe(503);
    const second = await simFor(b).attempt(xml, WINDOW);
    expect(second.reply?.Content).toBe('Echo: across replicas');
    expect(runsFor('o_two_replicas')).toHaveLength(1);
  });

  it('pushes 20 late answers from two workers with at most one access-token request, each exactly once', async () => {
    const tokensBefore = wechat.tokenRequests;
    const openIds = Array.from({ length: 20 }, (_, i) => `o_late_${i}`);
    const deliveries = await Promise.all(
      openIds.map((openId, i) => {
        const sim = simFor(ingresses[i % 2]!);
        return sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: slowQuery(`late ${i}`, 3000), MsgId: nextMsgId() }), WINDOW);
      }),
    );
    for (const d of deliveries) expect(d.accepted?.reply?.Content).toMatch(/taking a while|耗时/);
    await eventually(() => openIds.every((id) => wechat.textsTo(id).length === 1), 15_000);
    await new Promise((r) => setTimeout(r, 300));
    openIds.forEach((id, i) => expect(wechat.textsTo(id)).toEqual([`Echo: late ${i}`]));
    expect(wechat.tokenRequests - tokensBefore).toBeLessThanOrEqual(1);
    // Both workers did part of the work.
    for (const logs of await Promise.all(workers.map((w) => w.flushedLogs()))) expect(logs.filter((l) => l.includes('"answer ready"')).length).toBeGreaterThan(0);
  });

  it('survives an access token invalidated mid-run: the push that meets it is retried once with one new token, and no job fails', async () => {
    const tokensBefore = wechat.tokenRequests;
    const logsBefore = workers.map((w) => w.logs.length);
    // The token dies when the first push arrives, after every typing call (at 1.5 s) went through
    // with it: a push, not a typing call, is what meets the 40001.
    wechat.invalidateTokensAt((c) => c.path === SEND);
    const openIds = Array.from({ length: 6 }, (_, i) => `o_token_${i}`);
    await Promise.all(
      openIds.map((openId, i) => {
        const sim = simFor(ingresses[i % 2]!);
        // Answers 300 ms apart, after WeChat's last attempt: one push at a time.
        return sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: slowQuery(`token ${i}`, 3200 + 300 * i), MsgId: nextMsgId() }), WINDOW);
      }),
    );
    await eventually(() => openIds.every((id) => wechat.textsTo(id).length === 1), 15_000);
    openIds.forEach((id, i) => expect(wechat.textsTo(id)).toEqual([`Echo: token ${i}`]));
    const ours = wechat.calls.filter((c) => openIds.includes(String(c.body.touser)));
    const typing = ours.filter((c) => c.path.endsWith('/custom/typing'));
    expect(typing.length).toBeGreaterThan(0);
    expect(typing.map((c) => c.answer)).toEqual(typing.map(() => 0));
    // The first push met 40001 once, was retried with a new token, and succeeded; the others never met it.
    const sends = ours.filter((c) => c.path === SEND);
    expect(sends.map((c) => c.answer)).toEqual([40001, ...openIds.map(() => 0)]);
    expect(sends[1]!.body.touser).toBe(sends[0]!.body.touser);
    expect(sends[1]!.query.access_token).not.toBe(sends[0]!.query.access_token);
    expect(wechat.tokenRequests - tokensBefore).toBe(1);
    (await Promise.all(workers.map((w) => w.flushedLogs()))).forEach((logs, i) => expect(logs.slice(logsBefore[i]).filter((l) => l.includes('"job failed"'))).toEqual([]));
  });

  it('an ingress killed mid-wait leaves nothing behind: the next attempt, on the other replica, picks up', async () => {
    const doomed = await startProcess('ingress', env);
    procs.push(doomed);
    const xml = simFor(doomed).messageXml('o_orphaned_wait', { MsgType: 'text', Content: slowQuery('after a crash', 1000), MsgId: nextMsgId() });
    const attempt = simFor(doomed).attempt(xml, WINDOW);
    await new Promise((r) => setTimeout(r, 300));
    await doomed.kill();
    expect((await attempt).status).toBe(0); // the connection died with the process
    await new Promise((r) => setTimeout(r, WINDOW - 300));
    const retry = await simFor(ingresses[0]!).attempt(xml, WINDOW);
    expect(retry.reply?.Content).toBe('Echo: after a crash');
    expect(runsFor('o_orphaned_wait')).toHaveLength(1);
  });

  it('a worker killed mid-stream (SIGKILL): another worker takes the job over within about 30 s and the follower gets exactly one answer', { timeout: 90_000 }, async () => {
    // Only one worker may hold the job: stop the others first, and bring a rescuer up afterwards.
    await Promise.all(workers.map((w) => w.stop()));
    const victim = await startProcess('worker', env);
    procs.push(victim);
    const openId = 'o_worker_crash';
    const sim = simFor(ingresses[0]!);
    const delivery = sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: slowQuery('survivor', 4000), MsgId: nextMsgId() }), WINDOW);
    await eventually(() => runsFor(openId).length === 1, 5000);
    const rescuer = await startProcess('worker', env);
    procs.push(rescuer);
    await new Promise((r) => setTimeout(r, 500));
    const killedAt = Date.now();
    await victim.kill();
    expect((await delivery).accepted?.reply?.Content).toMatch(/taking a while|耗时/);
    await eventually(() => wechat.textsTo(openId).length === 1, 45_000);
    const takeover = Date.now() - killedAt;
    expect(takeover).toBeLessThan(35_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(wechat.textsTo(openId)).toEqual(['Echo: survivor']);
    expect(runsFor(openId)).toHaveLength(2); // the stream was re-run, the answer delivered once
    expect((await rescuer.flushedLogs()).some((l) => l.includes('"answer ready"') && l.includes(openId))).toBe(true);
  });

  it('a worker killed while pushing a long answer (SIGKILL): the push job is taken over within about 30 s and sends the rest, no part twice', { timeout: 90_000 }, async () => {
    // Only the victim may hold the push job: stop every other worker first.
    await Promise.all(procs.filter((p) => p.kind === 'worker').map((p) => p.stop()));
    const victim = await startProcess('worker', env);
    procs.push(victim);
    const openId = 'o_push_crash';
    dify.enqueue({ name: 'normal', answer: Array.from({ length: 6 }, (_, i) => `${i} ${'x'.repeat(1500)}`).join('\n\n') });
    wechat.slowPushWhen((m) => (m.touser === openId ? 1000 : undefined));
    const sim = simFor(ingresses[0]!);
    const first = await sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: 'long', MsgId: nextMsgId() }), WINDOW);
    expect(first.accepted?.reply?.Content?.startsWith('0 ')).toBe(true);
    await eventually(() => wechat.textsTo(openId).length === 1, 5000);
    const rescuer = await startProcess('worker', env);
    procs.push(rescuer);
    const killedAt = Date.now();
    await victim.kill(); // most likely while WeChat holds a part's answer: that part counts as sent
    await eventually(() => wechat.textsTo(openId).length === 5, 45_000);
    const takeover = Date.now() - killedAt;
    await new Promise((r) => setTimeout(r, 1500));
    wechat.slowPushWhen(undefined);
    expect(takeover).toBeLessThan(35_000);
    expect(wechat.textsTo(openId).map((t) => t.split(' ')[0])).toEqual(['1', '2', '3', '4', '5']);
  });
});
