import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { readAnswerJob } from './helpers/answer-job.js';
import { simulatorFor, startProcess, waitForReady, type ServiceProcess } from './helpers/processes.js';
import { testEnv, uniquePrefix } from './helpers/stack.js';
import { eventually, nextMsgId, slowQuery } from './helpers/wechat-timing.js';

// SIGTERM, as Kubernetes and docker send it, to the built entry points (real processes, Redis up):
// each process turns unready at once, finishes or hands back what it holds, and exits 0 by itself.

describe('graceful shutdown of the real processes', () => {
  let dify: FakeDify;
  const procs: ServiceProcess[] = [];
  const start = async (kind: 'ingress' | 'worker', env: Record<string, string>) => {
    const proc = await startProcess(kind, { ...env, LOG_LEVEL: 'info' });
    procs.push(proc);
    return proc;
  };
  const difyRuns = (text: string) => dify.runRequests().filter((r) => (r.body as { query: string }).query.endsWith(text));
  /** The clean path of runService, not its "could not stop cleanly in time" deadline (which also exits 0). */
  const stoppedCleanly = (proc: ServiceProcess) => proc.logs.some((l) => l.includes('"msg":"stopped"')) && !proc.logs.some((l) => l.includes('could not stop cleanly'));

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', pingIntervalMs: 200 });
  });
  afterEach(async () => {
    await Promise.all(procs.splice(0).map((p) => p.kill()));
  });
  afterAll(() => dify.close());

  it('ingress: /readyz turns 503 at once, it stops accepting, the request it holds still gets its reply, and it exits 0 within 10 s', async () => {
    const env = testEnv({ dify, overrides: { QUEUE_PREFIX: uniquePrefix() } });
    const ingress = await start('ingress', env);
    const worker = await start('worker', env);
    await Promise.all([waitForReady(ingress.url), waitForReady(worker.url)]);
    const sim = simulatorFor(ingress);
    const held = sim.attempt(sim.messageXml('o_held', { MsgType: 'text', Content: slowQuery('held', 3000), MsgId: nextMsgId() }));
    await eventually(() => difyRuns('held').length === 1 || undefined);

    const sentAt = Date.now();
    ingress.child.kill('SIGTERM');
    // Well inside the 1 s drain (apps/ingress/src/main.ts), while it still serves.
    await waitForReady(ingress.url, 503, 1000);
    expect(Date.now() - sentAt).toBeLessThan(800);
    expect((await fetch(`${ingress.url}/healthz`)).status).toBe(200);
    // After the drain the listener is closed: new connections are refused while the held request waits on.
    await new Promise((r) => setTimeout(r, sentAt + 1400 - Date.now()));
    await expect(fetch(`${ingress.url}/healthz`)).rejects.toThrow();
    expect(ingress.child.exitCode).toBeNull();

    const reply = await held;
    expect(reply).toMatchObject({ status: 200, reply: { Content: 'Echo: held' } });
    expect(await ingress.exited).toBe(0);
    expect(Date.now() - sentAt).toBeLessThan(10_000);
    expect(stoppedCleanly(ingress)).toBe(true);
  }, 30_000);

  it('worker: /readyz turns 503, a job it cannot finish within SHUTDOWN_GRACE_MS is handed back without using an attempt, it exits 0, and another worker answers once', async () => {
    const prefix = uniquePrefix();
    const env = testEnv({ dify, overrides: { QUEUE_PREFIX: prefix, WECHAT_TIMEOUT_MS: '3000', REPLY_MARGIN_MS: '100' } });
    const ingress = await start('ingress', env);
    const first = await start('worker', { ...env, SHUTDOWN_GRACE_MS: '1000' });
    await Promise.all([waitForReady(ingress.url), waitForReady(first.url)]);
    const sim = simulatorFor(ingress);
    const msgId = nextMsgId();
    const jobId = `m~default~o_handed_over~${msgId}`;
    // WeChat's clock shrunk to 3 s: attempts at t = 0, 3 and 6 s.
    const delivery = sim.deliver(sim.messageXml('o_handed_over', { MsgType: 'text', Content: slowQuery('handed over', 2500), MsgId: msgId }), 3000);
    await eventually(() => difyRuns('handed over').length === 1 || undefined);

    const sentAt = Date.now();
    first.child.kill('SIGTERM');
    await waitForReady(first.url, 503, 1000);
    expect(Date.now() - sentAt).toBeLessThan(800);
    expect(await first.exited).toBe(0);
    // It waited out the grace for the running answer, then stopped well before its 11 s deadline.
    expect(Date.now() - sentAt).toBeGreaterThanOrEqual(950);
    expect(Date.now() - sentAt).toBeLessThan(5000);
    expect(stoppedCleanly(first)).toBe(true);
    expect(difyRuns('handed over')[0]!.clientClosed).toBe(true);

    // Handed back untouched: a failed attempt would show attemptsMade 1 and a failedReason.
    const handedBack = await readAnswerJob(inject('redisUrl'), prefix, jobId);
    expect(handedBack).toMatchObject({ attemptsMade: 0, failedReason: undefined });
    expect(['delayed', 'waiting']).toContain(handedBack!.state);

    await start('worker', env);
    const result = await delivery;
    expect(result.accepted?.reply?.Content).toBe('Echo: handed over');
    expect(result.accepted!.attempt).toBeGreaterThan(1);
    expect(difyRuns('handed over')).toHaveLength(2);
    expect(await readAnswerJob(inject('redisUrl'), prefix, jobId)).toMatchObject({ state: 'completed', attemptsMade: 1 });
  }, 30_000);
});
