import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startWorker } from '../apps/worker/src/index.js';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { readAnswerJob } from './helpers/answer-job.js';
import { startStack, testEnv, type Stack } from './helpers/stack.js';
import { metricDelta, metricValue, scrapeMetrics } from './helpers/metrics.js';
import { eventually, nextMsgId, slowQuery, twoModesConfigFile } from './helpers/wechat-timing.js';


describe('operating the service', () => {
  let dify: FakeDify;
  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat' });
  });
  afterAll(() => dify.close());

  describe('with an admin password', () => {
    let stack: Stack;
    beforeAll(async () => {
      stack = await startStack(testEnv({ dify, overrides: { ADMIN_USERNAME: 'ops', ADMIN_PASSWORD: 's3cret' } }), { workerPort: 0 });
    });
    afterAll(() => stack.close());
    const auth = (user: string, pass: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` });

    it('serves Bull Board behind basic auth, listing every queue', async () => {
      const base = `${stack.ingress.url}/admin/queues`;
      expect((await fetch(base)).status).toBe(401);
      expect((await fetch(base, { headers: auth('ops', 'wrong') })).status).toBe(401);
      expect((await fetch(`${base}/api/queues`, { headers: auth('admin', 's3cret') })).status).toBe(401);
      const page = await fetch(base, { headers: auth('ops', 's3cret') });
      expect(page.status).toBe(200);
      expect(await page.text()).toContain('<html');
      const api = await fetch(`${base}/api/queues?activeQueue=answer&page=1&jobsPerPage=10`, { headers: auth('ops', 's3cret') });
      const names = ((await api.json()) as { queues: { name: string }[] }).queues.map((q) => q.name).sort();
      expect(names).toEqual(['answer', 'push']);
    });

    it('moves the metrics of both processes after a message', async () => {
      const sim = stack.simulator('plain');
      const before = await scrapeMetrics(stack.ingress.url);
      const reply = await sim.attempt(sim.messageXml('o_metrics', { MsgType: 'text', Content: 'count me', MsgId: nextMsgId() }));
      expect(reply.reply?.Content).toBe('Echo: count me');
      const after = await scrapeMetrics(stack.ingress.url);
      for (const [name, labels] of [
        ['wxdify_messages_received_total', 'type="text"'],
        ['wxdify_answers_delivered_total', 'path="passive_1"'],
        ['wxdify_wechat_attempts_total', 'attempt="1",outcome="reply"'],
        ['wxdify_answer_latency_seconds_count', 'path="passive_1"'],
      ] as const) {
        expect(metricValue(after, name, labels), name).toBe(metricValue(before, name, labels) + 1);
      }
      expect(after).toContain('wxdify_queue_jobs{queue="answer",state="waiting",component="ingress"}');
      expect(after).toContain('process_cpu_user_seconds_total');
      const worker = await scrapeMetrics(stack.workers[0]!.url!);
      expect(worker).toContain('component="worker"');
      expect(worker).toContain('wxdify_queue_jobs{queue="push"');
    });

    it('worker health: /healthz and /readyz', async () => {
      expect((await fetch(`${stack.workers[0]!.url}/healthz`)).status).toBe(200);
      expect((await fetch(`${stack.workers[0]!.url}/readyz`)).status).toBe(200);
    });
  });

  describe("metrics on each delivery path (WeChat's 5 s shrunk to 1 s; accounts `push` and `wait`)", () => {
    const WINDOW = 1000;
    let wechat: FakeWeChat;
    let stack: Stack;
    beforeAll(async () => {
      wechat = await new FakeWeChat().start();
      const env = testEnv({ dify, overrides: { CONFIG_FILE: twoModesConfigFile(dify, wechat.url), WECHAT_TIMEOUT_MS: String(WINDOW), REPLY_MARGIN_MS: '100' } });
      stack = await startStack(env, { workerPort: 0 });
    });
    afterAll(async () => {
      await stack.close();
      await wechat.close();
    });
    const send = (account: string, openId: string, content: string) => {
      const sim = stack.simulator('plain', account);
      return sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: content, MsgId: nextMsgId() }), WINDOW);
    };
    const both = async () => ({ ingress: await scrapeMetrics(stack.ingress.url), worker: await scrapeMetrics(stack.workers[0]!.url!) });

    it("times each Dify answer on the worker: first event and whole duration, one observation per answer", async () => {
      for (const n of [1, 2]) {
        const before = await both();
        const result = await send('wait', `o_timed_${n}`, `timed ${n}`);
        expect(result.accepted).toMatchObject({ attempt: 1, reply: { Content: `Echo: timed ${n}` } });
        const after = await both();
        for (const name of ['wxdify_dify_first_event_seconds_count', 'wxdify_dify_duration_seconds_count']) {
          expect(metricValue(after.worker, name, 'component="worker"'), name).toBe(metricValue(before.worker, name, 'component="worker"') + 1);
        }
        const passive = ['wxdify_answers_delivered_total', 'account="wait",path="passive_1"'] as const;
        expect(metricValue(after.ingress, ...passive)).toBe(metricValue(before.ingress, ...passive) + 1);
      }
    });

    it.each([
      ['llm_error', 'dify_stream'],
      ['provider_error', 'dify_http'],
    ])('counts a Dify failure (%s) under its code (%s) on the worker', async (scenario, code) => {
      const before = await scrapeMetrics(stack.workers[0]!.url!);
      const result = await send('wait', `o_fail_${scenario}`, `[[scenario:${scenario}]] fail`);
      // The follower gets an apology, not Dify's error text.
      expect(result.accepted?.reply?.Content).toBeTruthy();
      expect(result.accepted?.reply?.Content).not.toContain('Echo');
      const after = await scrapeMetrics(stack.workers[0]!.url!);
      expect(metricValue(after, 'wxdify_dify_errors_total', `code="${code}"`)).toBe(metricValue(before, 'wxdify_dify_errors_total', `code="${code}"`) + 1);
    });

    it("counts an answer given on WeChat's second attempt as passive_2, with its latency from the first arrival", async () => {
      const before = await scrapeMetrics(stack.ingress.url);
      const result = await send('wait', 'o_second_attempt', slowQuery('second attempt', 1300));
      expect(result.attempts.map((a) => a.status)).toEqual([503, 200]);
      expect(result.accepted?.reply?.Content).toBe('Echo: second attempt');
      const after = await scrapeMetrics(stack.ingress.url);
      const delta = metricDelta(before, after);
      expect(delta('wxdify_answers_delivered_total', 'account="wait",path="passive_2"')).toBe(1);
      expect(delta('wxdify_answers_delivered_total', 'account="wait",path="passive_1"')).toBe(0);
      expect(delta('wxdify_answer_latency_seconds_count', 'path="passive_2"')).toBe(1);
      // Measured from the first attempt's arrival: Dify alone took 1.3 s.
      expect(delta('wxdify_answer_latency_seconds_sum', 'path="passive_2"')).toBeGreaterThanOrEqual(1.25);
      expect(delta('wxdify_answer_latency_seconds_sum', 'path="passive_2"')).toBeLessThan(2.5);
    });

    it('counts a late answer pushed with the customer-service API as pushed, on the worker', async () => {
      const metric = ['wxdify_answers_delivered_total', 'account="push",path="pushed"'] as const;
      const latency = ['wxdify_answer_latency_seconds_count', 'path="pushed"'] as const;
      const before = await scrapeMetrics(stack.workers[0]!.url!);
      const result = await send('push', 'o_pushed', slowQuery('pushed late', 3500));
      expect(result.attempts.map((a) => a.status)).toEqual([503, 503, 200]);
      await eventually(() => wechat.textsTo('o_pushed').includes('Echo: pushed late') || undefined, 5000);
      const after = await eventually(async () => {
        const text = await scrapeMetrics(stack.workers[0]!.url!);
        return metricValue(text, ...metric) > metricValue(before, ...metric) ? text : undefined;
      });
      expect(metricValue(after, ...metric)).toBe(metricValue(before, ...metric) + 1);
      expect(metricValue(after, ...latency)).toBe(metricValue(before, ...latency) + 1);
      const sum = metricValue(after, 'wxdify_answer_latency_seconds_sum', 'path="pushed"') - metricValue(before, 'wxdify_answer_latency_seconds_sum', 'path="pushed"');
      expect(sum).toBeGreaterThanOrEqual(3.4);
    });
  });

  it('reports real queue depths: a job waits while no worker runs, is active while one answers, then leaves both', async () => {
    const stack = await startStack(testEnv({ dify }), { workers: 0 });
    const depth = (text: string, state: string) => metricValue(text, 'wxdify_queue_jobs', `queue="answer",state="${state}"`);
    const sim = stack.simulator('plain');
    // Nobody takes the job: the attempt is cut, the job stays queued.
    await sim.attempt(sim.messageXml('o_depth', { MsgType: 'text', Content: slowQuery('depth', 1500), MsgId: nextMsgId() }), 300);
    const waiting = await eventually(async () => {
      const text = await scrapeMetrics(stack.ingress.url);
      return depth(text, 'waiting') > 0 ? text : undefined;
    });
    expect(depth(waiting, 'waiting')).toBe(1);
    expect(depth(waiting, 'active')).toBe(0);
    const worker = await startWorker(stack.config, stack.logger, { port: 0, host: '127.0.0.1' });
    try {
      const active = await eventually(async () => {
        const text = await scrapeMetrics(worker.url!);
        return depth(text, 'active') === 1 ? text : undefined;
      });
      expect(depth(active, 'waiting')).toBe(0);
      expect(active).toContain('wxdify_queue_jobs{queue="answer",state="active",component="worker"} 1');
      const done = await eventually(async () => {
        const text = await scrapeMetrics(stack.ingress.url);
        return depth(text, 'active') === 0 ? text : undefined;
      }, 5000);
      expect(depth(done, 'waiting')).toBe(0);
    } finally {
      await stack.close();
      await worker.close(1000);
    }
  });

  it('has no dashboard (404) without an admin password', async () => {
    const stack = await startStack(testEnv({ dify }));
    try {
      expect((await fetch(`${stack.ingress.url}/admin/queues`)).status).toBe(404);
    } finally {
      await stack.close();
    }
  });

  it('ingress shutdown: /readyz turns 503 at once, a request in flight is still answered, then it stops', async () => {
    const stack = await startStack(testEnv({ dify }));
    const sim = stack.simulator('plain');
    const inFlight = sim.attempt(sim.messageXml('o_draining', { MsgType: 'text', Content: slowQuery('drain', 800), MsgId: nextMsgId() }));
    await new Promise((r) => setTimeout(r, 100));
    const closing = stack.ingress.close({ drainDelayMs: 400 });
    await new Promise((r) => setTimeout(r, 50));
    expect((await fetch(`${stack.ingress.url}/readyz`)).status).toBe(503);
    expect((await fetch(`${stack.ingress.url}/healthz`)).status).toBe(200);
    expect((await inFlight).reply?.Content).toBe('Echo: drain');
    await closing;
    await expect(fetch(`${stack.ingress.url}/healthz`)).rejects.toThrow();
    await Promise.all(stack.workers.map((w) => w.close()));
  });

  it('worker shutdown: a running job finishes within the grace period; one that cannot is handed to another worker, never lost', async () => {
    const stack = await startStack(testEnv({ dify, overrides: { WECHAT_TIMEOUT_MS: '3000' } }));
    const sim = stack.simulator('plain');
    // Finishes within the grace period.
    const quick = sim.attempt(sim.messageXml('o_grace', { MsgType: 'text', Content: slowQuery('graceful', 300), MsgId: nextMsgId() }));
    await new Promise((r) => setTimeout(r, 100));
    await stack.workers[0]!.close(2000);
    expect((await quick).reply?.Content).toBe('Echo: graceful');

    // Cannot finish: cancelled at the end of a short grace, handed back, and answered by a new worker.
    const first = await startWorker(stack.config, stack.logger, { port: null });
    const msgId = nextMsgId();
    const jobId = `m~default~o_handed_back~${msgId}`;
    const slow = sim.attempt(sim.messageXml('o_handed_back', { MsgType: 'text', Content: slowQuery('handed back', 1200), MsgId: msgId }), 3000);
    await new Promise((r) => setTimeout(r, 200));
    await first.close(100);
    // Handed back untouched: no attempt used, no failure recorded (a failed attempt would leave
    // attemptsMade 1 and a failedReason, and BullMQ would retry it after its back-off).
    const handedBack = await readAnswerJob(inject('redisUrl'), stack.config.queuePrefix, jobId);
    expect(handedBack).toMatchObject({ attemptsMade: 0, failedReason: undefined });
    expect(['delayed', 'waiting']).toContain(handedBack!.state);
    const second = await startWorker(stack.config, stack.logger, { port: null });
    expect((await slow).reply?.Content).toBe('Echo: handed back');
    expect(dify.runRequests().filter((r) => (r.body as { query: string }).query.endsWith('handed back'))).toHaveLength(2);
    // The second worker's run is the job's one and only used attempt.
    expect(await readAnswerJob(inject('redisUrl'), stack.config.queuePrefix, jobId)).toMatchObject({ state: 'completed', attemptsMade: 1 });
    await second.close();
    await stack.ingress.close();
  });
});
