import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { startStack, testEnv, type Stack } from './helpers/stack.js';
import { nextMsgId, slowQuery } from './helpers/wechat-timing.js';

const metricValue = (text: string, name: string, labels: string) => {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && labels.split(',').every((kv) => l.includes(kv)));
  return line ? Number(line.split(' ').at(-1)) : 0;
};

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
      const before = await (await fetch(`${stack.ingress.url}/metrics`)).text();
      const reply = await sim.attempt(sim.messageXml('o_metrics', { MsgType: 'text', Content: 'count me', MsgId: nextMsgId() }));
      expect(reply.reply?.Content).toBe('Echo: count me');
      const after = await (await fetch(`${stack.ingress.url}/metrics`)).text();
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
      const worker = await (await fetch(`${stack.workers[0]!.url}/metrics`)).text();
      expect(worker).toContain('component="worker"');
      expect(worker).toContain('wxdify_queue_jobs{queue="push"');
    });

    it('worker health: /healthz and /readyz', async () => {
      expect((await fetch(`${stack.workers[0]!.url}/healthz`)).status).toBe(200);
      expect((await fetch(`${stack.workers[0]!.url}/readyz`)).status).toBe(200);
    });
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
    const { startWorker } = await import('../apps/worker/src/index.js');
    const first = await startWorker(stack.config, stack.logger, { port: null });
    const slow = sim.attempt(sim.messageXml('o_handed_back', { MsgType: 'text', Content: slowQuery('handed back', 1200), MsgId: nextMsgId() }), 3000);
    await new Promise((r) => setTimeout(r, 200));
    await first.close(100);
    const second = await startWorker(stack.config, stack.logger, { port: null });
    expect((await slow).reply?.Content).toBe('Echo: handed back');
    expect(dify.runRequests().filter((r) => (r.body as { query: string }).query.endsWith('handed back'))).toHaveLength(2);
    await second.close();
    await stack.ingress.close();
  });
});
