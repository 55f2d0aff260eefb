import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { createLogger, loadConfig } from '../packages/core/src/index.js';
import { AES_KEY, testEnv, TOKEN } from './helpers/stack.js';
import { useFakeStack } from './helpers/fake-stack.js';
import { lineSink } from './helpers/line-sink.js';
import { eventually, nextMsgId, slowQuery } from './helpers/wechat-timing.js';

/** Every value stored under `prefix` (BullMQ's job hashes with their failedReason and stacktrace included), except the keys `skip` matches. */
async function dumpRedis(redis: Redis, prefix: string, skip: RegExp): Promise<string[]> {
  const out: string[] = [];
  for (const key of await redis.keys(`${prefix}:*`)) {
    if (skip.test(key)) continue;
    const type = await redis.type(key);
    if (type === 'hash') out.push(...Object.entries(await redis.hgetall(key)).map(([f, v]) => `${key} ${f}=${v}`));
    else if (type === 'string') out.push(`${key} ${await redis.get(key)}`);
    else if (type === 'list') out.push(`${key} ${(await redis.lrange(key, 0, -1)).join(' ')}`);
    else if (type === 'zset') out.push(`${key} ${(await redis.zrange(key, 0, -1)).join(' ')}`);
    else if (type === 'set') out.push(`${key} ${(await redis.smembers(key)).join(' ')}`);
    else if (type === 'stream') out.push(`${key} ${JSON.stringify(await redis.xrange(key, '-', '+'))}`);
  }
  return out;
}

// Everything the service logs at its most verbose level, across the paths that touch secrets:
// signature checks, AES, Dify calls that fail, access tokens fetched and rejected, pushes.
describe('logs', () => {
  const { sink, lines } = lineSink();
  const APP_SECRET = 'app-secret-never-logged';
  const ADMIN_PASSWORD = 'admin-password-never-logged';
  const fx = useFakeStack({
    dify: { apiKey: 'app-dify-key-never-logged', pingIntervalMs: 200 },
    env: ({ dify, wechat }) => testEnv({
      dify,
      wechatUrl: wechat.url,
      overrides: { LOG_LEVEL: 'trace', ENABLE_CUSTOM_MESSAGE: 'true', WECHAT_APP_SECRET: APP_SECRET, ADMIN_PASSWORD, WECHAT_TIMEOUT_MS: '1000', REPLY_MARGIN_MS: '100' },
    }),
    stack: { logDestination: sink },
  });

  it('never contain a secret, an access token, or an Authorization header, even when calls fail', async () => {
    const sim = fx.stack.simulator('safe');
    await sim.attempt(sim.messageXml('o_logs', { MsgType: 'text', Content: 'hello', MsgId: nextMsgId() }));
    fx.dify.enqueue('http_500');
    fx.dify.enqueue('http_500');
    fx.dify.enqueue('http_500');
    await sim.attempt(sim.messageXml('o_logs', { MsgType: 'text', Content: 'fail please', MsgId: nextMsgId() }));
    fx.wechat.failNext('/cgi-bin/message/custom/send', 40001);
    await sim.deliver(sim.messageXml('o_logs_push', { MsgType: 'text', Content: slowQuery('late', 2900), MsgId: nextMsgId() }), 1000);
    await eventually(() => fx.wechat.textsTo('o_logs_push').length === 1, 8000);
    const bad = await fetch(`${fx.stack.ingress.url}/admin/queues`, { headers: { authorization: `Basic ${Buffer.from(`admin:${ADMIN_PASSWORD}`).toString('base64')}` } });
    expect(bad.status).toBe(200);

    const tokens = fx.wechat.calls.map((c) => c.query.access_token).filter((t): t is string => Boolean(t));
    expect(tokens.length).toBeGreaterThan(0);
    const secrets = [TOKEN, AES_KEY, APP_SECRET, ADMIN_PASSWORD, fx.dify.apiKey, ...tokens];
    expect(lines.length).toBeGreaterThan(10);
    const all = lines.join('\n');
    for (const secret of secrets) expect(all.includes(secret), `a log line contains ${secret.slice(0, 6)}…`).toBe(false);
    expect(all).not.toMatch(/bearer /i);
    // The logs still say what happened, with the ids an operator needs.
    expect(lines.some((l) => l.includes('"reqId"') && l.includes('"msgId"'))).toBe(true);
    expect(lines.some((l) => l.includes('"jobId"') && l.includes('"account"'))).toBe(true);
  });
});

describe('logs and Redis when the WeChat API fails (plain token mode)', () => {
  const { sink, lines } = lineSink();
  const APP_SECRET = 'plain-app-secret-never-logged';
  const SEND = '/cgi-bin/message/custom/send';
  const fx = useFakeStack({
    dify: { apiKey: 'app-dify-key-plain-never-logged', pingIntervalMs: 200 },
    env: ({ dify, wechat }) => testEnv({
      dify,
      wechatUrl: wechat.url,
      overrides: {
        LOG_LEVEL: 'trace', ENABLE_CUSTOM_MESSAGE: 'true', WECHAT_ACCESS_TOKEN_MODE: 'plain', WECHAT_APP_SECRET: APP_SECRET,
        WECHAT_TIMEOUT_MS: '1000', REPLY_MARGIN_MS: '100',
      },
    }),
    stack: { logDestination: sink },
  });

  it('neither a log line nor a failed job in Redis holds the access token, the AppSecret or the Dify key when calls get HTTP 502 or lose the connection', async () => {
    // The first token request answers 502, a push to each follower fails once, a voice download gets 404.
    const failed = new Set<string>();
    const once = (what: string) => !failed.has(what) && failed.add(what);
    fx.wechat.failHttpWhen((c) => {
      if (c.path === '/cgi-bin/token' && once('token')) return 502;
      if (c.path === SEND && c.body.touser === 'o_http_502' && once('502')) return 502;
      if (c.path === SEND && c.body.touser === 'o_http_drop' && once('drop')) return 'drop';
      if (c.path === '/cgi-bin/media/get') return 404;
      return undefined;
    });
    const sim = fx.stack.simulator('plain');
    const late = (openId: string) => sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: slowQuery(openId, 2900), MsgId: nextMsgId() }), 1000);
    const voice = sim.deliver(sim.messageXml('o_http_voice', { MsgType: 'voice', MediaId: 'voice-gone', Format: 'amr', MsgId: nextMsgId() }), 1000);
    await Promise.all([late('o_http_502'), late('o_http_drop'), voice]);
    // A send that got HTTP 502 or lost its connection may have reached WeChat: counted as sent (at most once), with a warning.
    const unknown = () => lines.filter((l) => l.includes('push outcome unknown'));
    await eventually(() => unknown().length === 2, 10_000);
    expect(fx.wechat.calls.map((c) => c.answer)).toEqual(expect.arrayContaining([502, 'dropped']));
    const tokens = fx.wechat.calls.map((c) => c.query.access_token).filter((t): t is string => Boolean(t));
    expect(tokens.length).toBeGreaterThan(0);
    const secrets = [APP_SECRET, fx.dify.apiKey, ...tokens];
    const stored = await dumpRedis(fx.redis, fx.stack.config.queuePrefix, /:token:/);
    const all = lines.join('\n');
    for (const secret of secrets) {
      expect(all.includes(secret), `a log line contains ${secret.slice(0, 6)}…`).toBe(false);
      expect(stored.filter((l) => l.includes(secret)), `Redis holds ${secret.slice(0, 6)}…`).toEqual([]);
    }
    // What failed is still said: method and path, status or network error code.
    expect(unknown().join('\n')).toMatch(/POST \/cgi-bin\/message\/custom\/send: HTTP 502/);
    expect(unknown().join('\n')).toMatch(/POST \/cgi-bin\/message\/custom\/send: E[A-Z]+/);
    expect(all).toMatch(/GET \/cgi-bin\/token: HTTP 502/);
    expect(lines.find((l) => l.includes('voice could not be transcribed'))).toMatch(/GET \/cgi-bin\/media\/get: HTTP 404/);
  });

  it('logs no signed file URL when an answer image cannot be fetched', async () => {
    const signature = 'file-signature-never-logged';
    const missing = `${new URL(fx.dify.baseUrl).origin}/files/tools/gone.png?timestamp=1&nonce=2&sign=${signature}`;
    fx.dify.enqueue({ name: 'normal', answer: `a picture ![gone](${missing})` });
    const sim = fx.stack.simulator('plain');
    await sim.deliver(sim.messageXml('o_image_gone', { MsgType: 'text', Content: 'picture please', MsgId: nextMsgId() }), 1000);
    await eventually(() => lines.some((l) => l.includes('answer image could not be fetched')), 5000);
    expect(lines.filter((l) => l.includes(signature))).toEqual([]);
    const line = lines.find((l) => l.includes('answer image could not be fetched'))!;
    expect(JSON.parse(line)).toMatchObject({ status: 404 });
  });
});

describe('the redact list', () => {
  it('hides every secret of an account logged on its own or as a list, at any level', () => {
    const config = loadConfig({
      REDIS_URL: 'redis://127.0.0.1:1', WECHAT_APP_ID: 'wxredact', WECHAT_TOKEN: 'redacttoken1', WECHAT_ENCODING_AES_KEY: AES_KEY,
      WECHAT_APP_SECRET: 'redact-app-secret', DIFY_API_KEY: 'redact-dify-key', DIFY_API_BASE_URL: 'http://127.0.0.1:9/v1',
    });
    const account = config.accounts.get('default')!;
    const { sink, lines } = lineSink();
    const log = createLogger({ level: 'trace', destination: sink });
    log.trace({ account }, 'one account');
    log.trace({ accounts: [...config.accounts.values()] }, 'accounts');
    log.trace({ config }, 'config');
    log.trace({ difyApiKey: account.difyApiKey, secret: account.appSecret }, 'fields');
    log.flush();
    expect(lines).toHaveLength(4);
    for (const secret of ['redacttoken1', AES_KEY, 'redact-app-secret', 'redact-dify-key']) {
      expect(lines.filter((l) => l.includes(secret)), secret).toEqual([]);
    }
    expect(lines[0]).toContain('"wxredact"'); // the rest of the account is still there
  });
});
