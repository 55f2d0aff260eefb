import { setTimeout as sleep } from 'node:timers/promises';
import got, { type Got } from 'got';
import { AppError, defineScript, redisKey, type AccountConfig, type Logger, type RedisClient } from '@wxdify/core';

/** errcodes that mean "this access token is no longer good": expire it, refetch, retry once. */
const TOKEN_INVALID = new Set([40001, 40014, 42001]);
/** errcode -1: system busy, try again shortly. */
const SYSTEM_BUSY = -1;

/** A WeChat API call that returned a non-zero errcode; callers branch on `errcode`. */
export class WeChatApiError extends AppError {
  override readonly name = 'WeChatApiError';
  readonly errcode: number;
  constructor(errcode: number, errmsg: string, path: string) {
    super('wechat_api', `${path}: errcode ${errcode} ${errmsg}`, { retryable: errcode === SYSTEM_BUSY });
    this.errcode = errcode;
  }
}

// Deletes the cached token only if it is still the one that failed, so a token another process
// already refreshed is never thrown away (compare-and-expire).
const EXPIRE_IF_SAME_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

type WeChatReply = { errcode?: number; errmsg?: string } & Record<string, unknown>;

/**
 * The WeChat API client of one account: access token shared by every process through Redis
 * (`stable_token`, fetched by one process at a time), customer-service messages and typing.
 * https://developers.weixin.qq.com/doc/offiaccount/Basic_Information/getStableAccessToken.html
 */
export class WeChatApi {
  readonly #http: Got;
  readonly #redis: RedisClient;
  readonly #account: AccountConfig;
  readonly #log: Logger;
  readonly #tokenKey: string;
  readonly #lockKey: string;
  readonly #expireIfSame;

  constructor(opts: { account: AccountConfig; redis: RedisClient; prefix: string; logger: Logger }) {
    this.#account = opts.account;
    this.#redis = opts.redis;
    this.#log = opts.logger;
    this.#http = got.extend({ prefixUrl: opts.account.wechatApiBaseUrl, timeout: { request: 10_000 }, retry: { limit: 0 } });
    this.#tokenKey = redisKey(opts.prefix, 'token', opts.account.appId);
    this.#lockKey = redisKey(opts.prefix, 'token-lock', opts.account.appId);
    this.#expireIfSame = defineScript<[string, string], number>(opts.redis, 'wxdExpireToken', 1, EXPIRE_IF_SAME_LUA);
  }

  /** Sends a customer-service text message. */
  async sendText(openId: string, content: string): Promise<void> {
    await this.call('cgi-bin/message/custom/send', { touser: openId, msgtype: 'text', text: { content } });
  }

  /** Sends a customer-service image message (a temporary media id). */
  async sendImage(openId: string, mediaId: string): Promise<void> {
    await this.call('cgi-bin/message/custom/send', { touser: openId, msgtype: 'image', image: { media_id: mediaId } });
  }

  /** Shows or cancels "typing…" in the follower's chat (lasts about 15 s on WeChat's side). */
  async typing(openId: string, on: boolean): Promise<void> {
    await this.call('cgi-bin/message/custom/typing', { touser: openId, command: on ? 'Typing' : 'CancelTyping' });
  }

  /** POSTs JSON with the shared access token; refreshes an invalid token and retries once, backs off on -1. */
  async call(path: string, body: unknown): Promise<WeChatReply> {
    let refreshed = false;
    for (let busy = 0; ; ) {
      const token = await this.accessToken();
      const reply = await this.#http.post(path, { searchParams: { access_token: token }, json: body }).json<WeChatReply>();
      const errcode = reply.errcode ?? 0;
      if (errcode === 0) return reply;
      if (TOKEN_INVALID.has(errcode) && !refreshed) {
        refreshed = true;
        await this.#expireIfSame(this.#tokenKey, token);
        this.#log.warn({ errcode }, 'access token rejected; refreshing');
        continue;
      }
      if (errcode === SYSTEM_BUSY && busy++ < 3) {
        await sleep(300 * 2 ** busy);
        continue;
      }
      throw new WeChatApiError(errcode, String(reply.errmsg ?? ''), path);
    }
  }

  /** The account's access token from Redis, fetched by exactly one process when missing. */
  async accessToken(): Promise<string> {
    for (let i = 0; i < 100; i++) {
      const cached = await this.#redis.get(this.#tokenKey);
      if (cached) return cached;
      const locked = await this.#redis.set(this.#lockKey, String(process.pid), 'PX', 10_000, 'NX');
      if (locked === 'OK') {
        try {
          return await this.#fetchToken();
        } finally {
          await this.#redis.del(this.#lockKey);
        }
      }
      await sleep(100);
    }
    throw new AppError('wechat_api', 'timed out waiting for another process to fetch the access token', { retryable: true });
  }

  async #fetchToken(): Promise<string> {
    if (!this.#account.appSecret) throw new AppError('wechat_api', 'WECHAT_APP_SECRET is required for the WeChat API');
    const reply = await this.#http
      .post('cgi-bin/stable_token', {
        json: { grant_type: 'client_credential', appid: this.#account.appId, secret: this.#account.appSecret, force_refresh: false },
      })
      .json<WeChatReply & { access_token?: string; expires_in?: number }>();
    if (!reply.access_token) throw new WeChatApiError(reply.errcode ?? -2, String(reply.errmsg ?? 'no token'), 'stable_token');
    // Refresh five minutes before WeChat expires it (tokens last 7200 s).
    const ttl = Math.max(60, (reply.expires_in ?? 7200) - 300);
    await this.#redis.set(this.#tokenKey, reply.access_token, 'EX', ttl);
    this.#log.info({ ttl }, 'access token fetched');
    return reply.access_token;
  }
}
