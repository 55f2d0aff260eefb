import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createLogger, loadConfig, type AccountConfig } from '../packages/core/src/index.js';
import { WeChatApi } from '../apps/worker/src/wechat-api.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { uniquePrefix } from './helpers/prefix.js';

const logger = createLogger({ level: 'silent' });
const accountFor = (url: string, mode?: string): AccountConfig =>
  loadConfig({
    REDIS_URL: 'redis://127.0.0.1:1',
    WECHAT_APP_ID: 'wxapi',
    WECHAT_TOKEN: 'tok123',
    WECHAT_APP_SECRET: 'secret',
    DIFY_API_KEY: 'k',
    WECHAT_API_BASE_URL: url,
    ...(mode ? { WECHAT_ACCESS_TOKEN_MODE: mode } : {}),
  }).accounts.get('default')!;

describe('the WeChat API client', () => {
  let wechat: FakeWeChat;
  let redis: Redis;
  beforeAll(async () => {
    wechat = await new FakeWeChat().start();
    redis = new Redis(inject('redisUrl'));
  });
  afterAll(async () => {
    await wechat.close();
    await redis.quit();
  });

  it('shares one stable_token between processes: fetched once, cached in Redis until 5 minutes before it expires', async () => {
    const prefix = uniquePrefix();
    const account = accountFor(wechat.url);
    // Two clients on two connections stand for two worker processes.
    const other = new Redis(inject('redisUrl'));
    const a = new WeChatApi({ account, redis, prefix, logger });
    const b = new WeChatApi({ account, redis: other, prefix, logger });
    const before = wechat.tokenRequests;
    await Promise.all([a.sendText('o_api', 'one'), b.sendText('o_api', 'two'), a.typing('o_api', true), b.sendText('o_api', 'three')]);
    expect(wechat.tokenRequests - before).toBe(1);
    expect(wechat.calls.filter((c) => c.path === '/cgi-bin/stable_token')).toHaveLength(1);
    const ttl = await redis.ttl(`${prefix}:token:wxapi`);
    expect(ttl).toBeGreaterThan(6800);
    expect(ttl).toBeLessThanOrEqual(6900);
    await other.quit();
  });

  it('uses /cgi-bin/token when WECHAT_ACCESS_TOKEN_MODE=plain', async () => {
    const api = new WeChatApi({ account: accountFor(wechat.url, 'plain'), redis, prefix: uniquePrefix(), logger });
    await api.sendText('o_plain', 'hi');
    const tokenCall = wechat.calls.filter((c) => c.path === '/cgi-bin/token').at(-1);
    expect(tokenCall?.query).toMatchObject({ grant_type: 'client_credential', appid: 'wxapi', secret: 'secret' });
    expect(wechat.textsTo('o_plain')).toEqual(['hi']);
  });

  it('expires a rejected token only if it is still the cached one, fetches a new one and retries the call once', async () => {
    const prefix = uniquePrefix();
    const api = new WeChatApi({ account: accountFor(wechat.url), redis, prefix, logger });
    await api.sendText('o_rejected', 'first');
    const stale = await redis.get(`${prefix}:token:wxapi`);
    wechat.invalidateTokens();
    const before = wechat.tokenRequests;
    await api.sendText('o_rejected', 'second');
    expect(wechat.tokenRequests - before).toBe(1);
    expect(await redis.get(`${prefix}:token:wxapi`)).not.toBe(stale);
    expect(wechat.textsTo('o_rejected')).toEqual(['first', 'second']);
  });
});
