import { setTimeout as sleep } from 'node:timers/promises';
import { inspect } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { AppError, createLogger, loadConfig, type AccountConfig } from '../packages/core/src/index.js';
import { WeChatApi, WeChatApiError, tokenCacheSeconds } from '../apps/worker/src/wechat-api.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { uniquePrefix } from './helpers/prefix.js';
import { eventually } from './helpers/wechat-timing.js';

const logger = createLogger({ level: 'silent' });
const APP_SECRET = 'wxapi-app-secret-value';
const SEND = '/cgi-bin/message/custom/send';
const accountFor = (url: string, mode?: string): AccountConfig =>
  loadConfig({
    REDIS_URL: 'redis://127.0.0.1:1',
    WECHAT_APP_ID: 'wxapi',
    WECHAT_TOKEN: 'tok123',
    WECHAT_APP_SECRET: APP_SECRET,
    DIFY_API_KEY: 'k',
    WECHAT_API_BASE_URL: url,
    ...(mode ? { WECHAT_ACCESS_TOKEN_MODE: mode } : {}),
  }).accounts.get('default')!;

describe('the WeChat API client', () => {
  let wechat: FakeWeChat;
  let redis: Redis;
  let other: Redis;
  beforeAll(async () => {
    wechat = await new FakeWeChat().start();
    redis = new Redis(inject('redisUrl'));
    // A second connection stands for a second worker process.
    other = new Redis(inject('redisUrl'));
  });
  afterEach(() => {
    wechat.failWhen(undefined);
    wechat.failHttpWhen(undefined);
  });
  afterAll(async () => {
    await wechat.close();
    await Promise.all([redis.quit(), other.quit()]);
  });

  it('shares one stable_token between processes: fetched once, cached in Redis for half its life', async () => {
    const prefix = uniquePrefix();
    const account = accountFor(wechat.url);
    const a = new WeChatApi({ account, redis, prefix, logger });
    const b = new WeChatApi({ account, redis: other, prefix, logger });
    const before = wechat.tokenRequests;
    await Promise.all([a.sendText('o_api', 'one'), b.sendText('o_api', 'two'), a.typing('o_api', true), b.sendText('o_api', 'three')]);
    expect(wechat.tokenRequests - before).toBe(1);
    const ttl = await redis.ttl(`${prefix}:token:wxapi`);
    expect(ttl).toBeGreaterThan(3500);
    expect(ttl).toBeLessThanOrEqual(3600);
  });

  it('caches a token for min(expires_in - 300, expires_in / 2) seconds, never longer than WeChat says', () => {
    expect(tokenCacheSeconds(7200)).toBe(3600);
    expect(tokenCacheSeconds(500)).toBe(200);
    expect(tokenCacheSeconds(300)).toBe(150);
    for (const expiresIn of [1, 2, 59, 299, 301, 599, 600, 601, 7200]) {
      expect(tokenCacheSeconds(expiresIn)).toBeLessThan(expiresIn);
      expect(tokenCacheSeconds(expiresIn)).toBeLessThanOrEqual(Math.max(expiresIn - 300, expiresIn / 2));
    }
  });

  it('uses /cgi-bin/token when WECHAT_ACCESS_TOKEN_MODE=plain', async () => {
    const api = new WeChatApi({ account: accountFor(wechat.url, 'plain'), redis, prefix: uniquePrefix(), logger });
    await api.sendText('o_plain', 'hi');
    const tokenCall = wechat.calls.filter((c) => c.path === '/cgi-bin/token').at(-1);
    expect(tokenCall?.query).toMatchObject({ grant_type: 'client_credential', appid: 'wxapi', secret: APP_SECRET });
    expect(wechat.textsTo('o_plain')).toEqual(['hi']);
  });

  it('expires a rejected token only while it is still the cached one: a token another client already stored stays, and no extra one is fetched', async () => {
    const prefix = uniquePrefix();
    const key = `${prefix}:token:wxapi`;
    const account = accountFor(wechat.url);
    const a = new WeChatApi({ account, redis, prefix, logger });
    const b = new WeChatApi({ account, redis: other, prefix, logger });
    await a.sendText('o_cae_a', 'first');
    const t1 = await redis.get(key);
    // A sends with T1; its reply is held until B has met the invalidation and stored T2.
    const held = wechat.hold((c) => c.path === SEND && c.body.touser === 'o_cae_a');
    const aSend = a.sendText('o_cae_a', 'second');
    await eventually(() => held.count === 1);
    wechat.invalidateTokens();
    const before = wechat.tokenRequests;
    await b.sendText('o_cae_b', 'refreshes');
    const t2 = await redis.get(key);
    expect(t2).not.toBe(t1);
    held.release();
    await aSend;
    expect(await redis.get(key)).toBe(t2);
    expect(wechat.tokenRequests - before).toBe(1);
    const aCalls = wechat.calls.filter((c) => c.path === SEND && c.body.touser === 'o_cae_a').slice(1);
    expect(aCalls.map((c) => [c.query.access_token, c.answer])).toEqual([[t1, 40001], [t2, 0]]);
    expect(wechat.textsTo('o_cae_a')).toEqual(['first', 'second']);
  });

  it('retries a call rejected for its token once, not more: a second 40001 fails the call', async () => {
    const api = new WeChatApi({ account: accountFor(wechat.url), redis, prefix: uniquePrefix(), logger });
    wechat.failWhen((c) => (c.path === SEND && c.body.touser === 'o_twice' ? 40001 : undefined));
    const before = wechat.tokenRequests;
    const err = await api.sendText('o_twice', 'never').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeChatApiError);
    expect(err).toMatchObject({ errcode: 40001, retryable: false });
    expect(wechat.calls.filter((c) => c.path === SEND && c.body.touser === 'o_twice')).toHaveLength(2);
    expect(wechat.tokenRequests - before).toBe(2); // the first token, then one refresh
  });

  it('releases the token lock only while it owns it, and holds it twice as long as the token request may take', async () => {
    const prefix = uniquePrefix();
    const lockKey = `${prefix}:token-lock:wxapi`;
    const account = accountFor(wechat.url);
    const a = new WeChatApi({ account, redis, prefix, logger });
    const b = new WeChatApi({ account, redis: other, prefix, logger });
    const held = wechat.hold((c) => c.path === '/cgi-bin/stable_token');
    const aToken = a.accessToken();
    await eventually(() => held.count === 1);
    const aOwner = await redis.get(lockKey);
    expect(await redis.pttl(lockKey)).toBeGreaterThan(19_000); // the request times out after 10 s
    // A's request outlives its lock (made to expire now); B takes the lock over and asks too.
    await redis.pexpire(lockKey, 1);
    await sleep(10);
    const bToken = b.accessToken();
    await eventually(() => held.count === 2);
    const bOwner = await redis.get(lockKey);
    expect(bOwner).toBeTruthy();
    expect(bOwner).not.toBe(aOwner);
    held.releaseOne();
    await aToken;
    // A, finishing late, left B's lock alone.
    expect(await redis.get(lockKey)).toBe(bOwner);
    held.release();
    await bToken;
    expect(await redis.get(lockKey)).toBeNull();
  });

  it('turns HTTP and network failures into errors naming only the method and path: no access token, no AppSecret, no request', async () => {
    const api = new WeChatApi({ account: accountFor(wechat.url, 'plain'), redis, prefix: uniquePrefix(), logger });
    const failure = async () => {
      const err = await api.sendText('o_http', 'x').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AppError);
      expect((err as AppError).cause).toBeUndefined();
      const dump = inspect(err, { depth: 10, showHidden: true });
      const tokens = wechat.calls.map((c) => c.query.access_token).filter((t): t is string => Boolean(t));
      for (const secret of [APP_SECRET, ...tokens]) expect(dump.includes(secret), 'the error holds a secret').toBe(false);
      return err as AppError;
    };
    wechat.failHttpWhen((c) => (c.path === '/cgi-bin/token' ? 502 : undefined));
    expect(await failure()).toMatchObject({ message: 'GET /cgi-bin/token: HTTP 502', retryable: true, status: 502 });
    wechat.failHttpWhen((c) => (c.path === SEND ? 502 : undefined));
    expect(await failure()).toMatchObject({ message: `POST ${SEND}: HTTP 502`, retryable: true, status: 502 });
    wechat.failHttpWhen((c) => (c.path === SEND ? 'drop' : undefined));
    const dropped = await failure();
    expect(dropped.message).toMatch(/^POST \/cgi-bin\/message\/custom\/send: E[A-Z]+$/);
    expect(dropped.retryable).toBe(true);
    wechat.failHttpWhen((c) => (c.path === SEND ? 400 : undefined));
    expect(await failure()).toMatchObject({ message: `POST ${SEND}: HTTP 400`, retryable: false });
  });
});
