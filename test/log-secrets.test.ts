import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { AES_KEY, startStack, testEnv, TOKEN, type Stack } from './helpers/stack.js';
import { eventually, nextMsgId, slowQuery } from './helpers/wechat-timing.js';

// Everything the service logs at its most verbose level, across the paths that touch secrets:
// signature checks, AES, Dify calls that fail, access tokens fetched and rejected, pushes.
describe('logs', () => {
  let dify: FakeDify;
  let wechat: FakeWeChat;
  let stack: Stack;
  const lines: string[] = [];
  const APP_SECRET = 'app-secret-never-logged';
  const ADMIN_PASSWORD = 'admin-password-never-logged';

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', apiKey: 'app-dify-key-never-logged', pingIntervalMs: 200 });
    wechat = await new FakeWeChat().start();
    const sink = new Writable({
      write(chunk, _enc, done) {
        lines.push(...String(chunk).split('\n').filter(Boolean));
        done();
      },
    });
    stack = await startStack(
      testEnv({
        dify,
        wechatUrl: wechat.url,
        overrides: { LOG_LEVEL: 'trace', ENABLE_CUSTOM_MESSAGE: 'true', WECHAT_APP_SECRET: APP_SECRET, ADMIN_PASSWORD, WECHAT_TIMEOUT_MS: '1000', REPLY_MARGIN_MS: '100' },
      }),
      { logDestination: sink },
    );
  });
  afterAll(async () => {
    await stack.close();
    await Promise.all([dify.close(), wechat.close()]);
  });

  it('never contain a secret, an access token, or an Authorization header, even when calls fail', async () => {
    const sim = stack.simulator('safe');
    await sim.attempt(sim.messageXml('o_logs', { MsgType: 'text', Content: 'hello', MsgId: nextMsgId() }));
    dify.enqueue('http_500');
    dify.enqueue('http_500');
    dify.enqueue('http_500');
    await sim.attempt(sim.messageXml('o_logs', { MsgType: 'text', Content: 'fail please', MsgId: nextMsgId() }));
    wechat.failNext('/cgi-bin/message/custom/send', 40001);
    await sim.deliver(sim.messageXml('o_logs_push', { MsgType: 'text', Content: slowQuery('late', 2900), MsgId: nextMsgId() }), 1000);
    await eventually(() => wechat.textsTo('o_logs_push').length === 1, 8000);
    const bad = await fetch(`${stack.ingress.url}/admin/queues`, { headers: { authorization: `Basic ${Buffer.from(`admin:${ADMIN_PASSWORD}`).toString('base64')}` } });
    expect(bad.status).toBe(200);

    const tokens = wechat.calls.map((c) => c.query.access_token).filter((t): t is string => Boolean(t));
    expect(tokens.length).toBeGreaterThan(0);
    const secrets = [TOKEN, AES_KEY, APP_SECRET, ADMIN_PASSWORD, dify.apiKey, ...tokens];
    expect(lines.length).toBeGreaterThan(10);
    const all = lines.join('\n');
    for (const secret of secrets) expect(all.includes(secret), `a log line contains ${secret.slice(0, 6)}…`).toBe(false);
    expect(all).not.toMatch(/bearer /i);
    // The logs still say what happened, with the ids an operator needs.
    expect(lines.some((l) => l.includes('"reqId"') && l.includes('"msgId"'))).toBe(true);
    expect(lines.some((l) => l.includes('"jobId"') && l.includes('"account"'))).toBe(true);
  });
});
