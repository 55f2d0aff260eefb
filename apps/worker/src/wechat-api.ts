import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import got, { HTTPError, ParseError, RequestError, type Got } from 'got';
import { AppError, defineScript, redisKey, type AccountConfig, type Logger, type Metrics, type RedisClient } from '@wxdify/core';
import { readCapped } from './read-capped.js';

/** errcodes that mean "this access token is no longer good": expire it, refetch, retry once. */
const TOKEN_INVALID = new Set([40001, 40014, 42001]);
/** errcode -1: system busy, try again shortly. */
const SYSTEM_BUSY = -1;
/** Timeout of the JSON calls, the token request included. */
const REQUEST_TIMEOUT_MS = 10_000;
/**
 * The token lock outlives the token request twice over, so it cannot expire while its owner still
 * waits for WeChat (a second process would fetch, and in plain mode replace, the token meanwhile);
 * a process that died holding it only delays the others by this much.
 */
const TOKEN_LOCK_MS = 2 * REQUEST_TIMEOUT_MS;
const TOKEN_LOCK_POLL_MS = 100;

/** A WeChat API call that returned a non-zero errcode; callers branch on `errcode`. */
export class WeChatApiError extends AppError {
  override readonly name = 'WeChatApiError';
  readonly errcode: number;
  constructor(errcode: number, errmsg: string, path: string) {
    super('wechat_api', `${path}: errcode ${errcode} ${errmsg}`, { retryable: errcode === SYSTEM_BUSY });
    this.errcode = errcode;
  }
}

// Deletes a key only if it still holds ARGV[1]: the cached token only if it is still the one that
// failed, so a token another process already refreshed is never thrown away (compare-and-expire),
// and the token lock only if it is still ours, not the next owner's after it expired.
const DELETE_IF_SAME_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

type WeChatReply = { errcode?: number; errmsg?: string } & Record<string, unknown>;

/** Temporary media types of `media/upload`. */
export type TempMediaType = 'image' | 'voice' | 'video' | 'thumb';

/** A downloaded media file. */
export interface WeChatMedia {
  bytes: Buffer;
  contentType: string;
}

/**
 * Temporary media limits, checked before uploading (WeChat would refuse with 40005/40009-40012).
 * The doc lists image 10 MB PNG/JPEG/JPG/GIF, voice 2 MB AMR/MP3, video 10 MB MP4, thumb 64 KB JPG
 * (its notes section still says 2 MB for images, as older SDK docs do; WeChat has the last word).
 * https://developers.weixin.qq.com/doc/service/api/material/temporary/api_uploadtempmedia
 */
export const TEMP_MEDIA_LIMITS = {
  image: { maxBytes: 10 * 1024 * 1024, extensions: ['png', 'jpg', 'jpeg', 'gif'] },
  voice: { maxBytes: 2 * 1024 * 1024, extensions: ['amr', 'mp3'] },
  video: { maxBytes: 10 * 1024 * 1024, extensions: ['mp4'] },
  thumb: { maxBytes: 64 * 1024, extensions: ['jpg', 'jpeg'] },
} as const satisfies Record<TempMediaType, { maxBytes: number; extensions: readonly string[] }>;

/** Socket errors raised before a request could leave: WeChat cannot have received it. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/**
 * A call that got no errcode answer: an HTTP error status, an unreadable reply, or a network
 * failure. `mayHaveArrived` is false when the call surely never reached WeChat (the access token
 * could not be had, or the connection could not be made), so a caller knows whether WeChat may
 * have acted on it (a customer-service message may have been delivered).
 */
export class WeChatHttpError extends AppError {
  override readonly name = 'WeChatHttpError';
  readonly mayHaveArrived: boolean;
  constructor(message: string, opts: { mayHaveArrived: boolean; status?: number | undefined; retryable: boolean }) {
    super('wechat_api', message, { retryable: opts.retryable, ...(opts.status === undefined ? {} : { status: opts.status }) });
    this.mayHaveArrived = opts.mayHaveArrived;
  }
}

/** A file WeChat would refuse as temporary media (size or format); nothing was sent. */
export class MediaLimitError extends AppError {
  override readonly name = 'MediaLimitError';
  constructor(message: string) {
    super('wechat_api', message);
  }
}

/** Media calls move files: a longer timeout than the JSON calls. */
const MEDIA_TIMEOUT_MS = 30_000;
/** Voice is at most 2 MB and video 10 MB on WeChat's side; more than this is not a media file. */
const MEDIA_DOWNLOAD_MAX_BYTES = 10 * 1024 * 1024;

/**
 * The WeChat API client of one account: access token shared by every process through Redis
 * (`stable_token`, fetched by one process at a time), customer-service messages and typing,
 * temporary media upload and download.
 * https://developers.weixin.qq.com/doc/offiaccount/Basic_Information/getStableAccessToken.html
 */
export class WeChatApi {
  readonly #http: Got;
  readonly #redis: RedisClient;
  readonly #account: AccountConfig;
  readonly #log: Logger;
  readonly #metrics: Metrics | undefined;
  readonly #tokenKey: string;
  readonly #lockKey: string;
  readonly #deleteIfSame;

  constructor(opts: { account: AccountConfig; redis: RedisClient; prefix: string; logger: Logger; metrics?: Metrics }) {
    this.#metrics = opts.metrics;
    this.#account = opts.account;
    this.#redis = opts.redis;
    this.#log = opts.logger;
    this.#http = got.extend({ prefixUrl: opts.account.wechatApiBaseUrl, timeout: { request: REQUEST_TIMEOUT_MS }, retry: { limit: 0 } });
    this.#tokenKey = redisKey(opts.prefix, 'token', opts.account.appId);
    this.#lockKey = redisKey(opts.prefix, 'token-lock', opts.account.appId);
    this.#deleteIfSame = defineScript<[string, string], number>(opts.redis, 'wxdExpireToken', 1, DELETE_IF_SAME_LUA);
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

  /**
   * Uploads a temporary media file (kept by WeChat for 3 days) and returns its `media_id`. WeChat
   * reads the format from the part's filename; a file over {@link TEMP_MEDIA_LIMITS} is refused
   * here with a MediaLimitError, without a call.
   * https://developers.weixin.qq.com/doc/service/api/material/temporary/api_uploadtempmedia
   */
  async uploadTempMedia(type: TempMediaType, bytes: Uint8Array, filename: string, contentType: string): Promise<string> {
    const path = 'cgi-bin/media/upload';
    const limit = TEMP_MEDIA_LIMITS[type];
    const ext = /\.([a-z0-9]+)$/i.exec(filename)?.[1]?.toLowerCase() ?? '';
    if (!(limit.extensions as readonly string[]).includes(ext)) throw new MediaLimitError(`${type} must be ${limit.extensions.join('/')}, not "${ext}"`);
    if (bytes.length > limit.maxBytes) throw new MediaLimitError(`${type} of ${bytes.length} bytes is over WeChat's ${limit.maxBytes}`);
    const reply = await this.#withToken('POST', path, (token) => {
      const form = new FormData();
      form.set('media', new Blob([bytes], { type: contentType }), filename);
      return this.#http.post(path, { searchParams: { access_token: token, type }, body: form, timeout: { request: MEDIA_TIMEOUT_MS } }).json<WeChatReply>();
    });
    if (typeof reply.media_id !== 'string' || !reply.media_id) throw new WeChatApiError(-2, 'no media_id in the upload reply', path);
    return reply.media_id;
  }

  /**
   * Downloads a temporary media file (a follower's voice comes as AMR). WeChat answers an unknown
   * or expired id with a JSON errcode (40007) instead of the bytes, so the body is checked.
   * https://developers.weixin.qq.com/doc/service/api/material/temporary/api_getmedia
   */
  async downloadMedia(mediaId: string, maxBytes = MEDIA_DOWNLOAD_MAX_BYTES): Promise<WeChatMedia> {
    const path = 'cgi-bin/media/get';
    let media: WeChatMedia | undefined;
    await this.#withToken('GET', path, async (token) => {
      const stream = this.#http.stream(path, { searchParams: { access_token: token, media_id: mediaId }, timeout: { request: MEDIA_TIMEOUT_MS } });
      const { bytes, contentType } = await readCapped(stream, maxBytes);
      const error = errorReply(bytes, contentType);
      if (error) return error;
      media = { bytes, contentType };
      return { errcode: 0 };
    });
    return media!;
  }

  /** POSTs JSON with the shared access token; refreshes an invalid token and retries once, backs off on -1. */
  async call(path: string, body: unknown): Promise<WeChatReply> {
    return this.#withToken('POST', path, (token) => this.#http.post(path, { searchParams: { access_token: token }, json: body }).json<WeChatReply>());
  }

  /** Runs `send` with the shared token: an invalid token is expired and fetched again once, -1 backs off. */
  async #withToken(method: string, path: string, send: (token: string) => Promise<WeChatReply>): Promise<WeChatReply> {
    let refreshed = false;
    for (let busy = 0; ; ) {
      const token = await this.accessToken();
      const reply = await send(token).catch((err: unknown) => {
        throw httpFailure(method, path, err, true);
      });
      const errcode = reply.errcode ?? 0;
      if (errcode === 0) return reply;
      this.#metrics?.wechatApiErrors.inc({ errcode: String(errcode) });
      if (TOKEN_INVALID.has(errcode) && !refreshed) {
        refreshed = true;
        await this.#deleteIfSame(this.#tokenKey, token);
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

  /**
   * The account's access token from Redis, fetched by exactly one process when missing: each call
   * locks with its own random owner (a pid would be shared by every client of one process) and only
   * that owner releases the lock. Waiters poll for as long as the lock can live, then take it over.
   */
  async accessToken(): Promise<string> {
    let owner: string | undefined;
    const giveUpAt = Date.now() + TOKEN_LOCK_MS + 10 * TOKEN_LOCK_POLL_MS;
    for (;;) {
      const cached = await this.#redis.get(this.#tokenKey);
      if (cached) return cached;
      // The owner id is made only when the token is missing (rare), not on every call.
      owner ??= randomUUID();
      if ((await this.#redis.set(this.#lockKey, owner, 'PX', TOKEN_LOCK_MS, 'NX')) === 'OK') {
        try {
          // The previous owner may have stored a token between our GET and our SET.
          return (await this.#redis.get(this.#tokenKey)) ?? (await this.#fetchToken());
        } finally {
          await this.#deleteIfSame(this.#lockKey, owner);
        }
      }
      if (Date.now() > giveUpAt) break;
      await sleep(TOKEN_LOCK_POLL_MS);
    }
    throw new AppError('wechat_api', 'timed out waiting for another process to fetch the access token', { retryable: true });
  }

  async #fetchToken(): Promise<string> {
    const { appId, appSecret, accessTokenMode } = this.#account;
    if (!appSecret) throw new AppError('wechat_api', 'WECHAT_APP_SECRET is required for the WeChat API');
    // stable_token (default): every caller gets the same token until it expires, so other systems
    // using the same AppID do not invalidate ours. /cgi-bin/token: each call issues a new one.
    const path = accessTokenMode === 'plain' ? 'cgi-bin/token' : 'cgi-bin/stable_token';
    const request =
      accessTokenMode === 'plain'
        ? this.#http.get(path, { searchParams: { grant_type: 'client_credential', appid: appId, secret: appSecret } })
        : this.#http.post(path, { json: { grant_type: 'client_credential', appid: appId, secret: appSecret, force_refresh: false } });
    const reply = await request.json<WeChatReply & { access_token?: string; expires_in?: number }>().catch((err: unknown) => {
      throw httpFailure(accessTokenMode === 'plain' ? 'GET' : 'POST', path, err, false);
    });
    if (!reply.access_token) throw new WeChatApiError(reply.errcode ?? -2, String(reply.errmsg ?? 'no token'), path);
    const expiresIn = typeof reply.expires_in === 'number' && reply.expires_in > 0 ? reply.expires_in : 7200;
    const ttl = tokenCacheSeconds(expiresIn);
    if (ttl > 0) await this.#redis.set(this.#tokenKey, reply.access_token, 'EX', ttl);
    this.#log.info({ ttl, expiresIn, path }, 'access token fetched');
    return reply.access_token;
  }

}

/**
 * How long to cache a token WeChat issued for `expiresIn` seconds: half its life, and at least five
 * minutes before it expires (stable_token renews a token in its last five minutes; /cgi-bin/token
 * keeps the old one valid five minutes after a new one), never longer than WeChat says. A token in
 * its last five minutes is kept for half of what is left.
 */
export function tokenCacheSeconds(expiresIn: number): number {
  const ttl = expiresIn > 300 ? Math.min(expiresIn - 300, expiresIn / 2) : expiresIn / 2;
  return Math.floor(ttl);
}

/**
 * A got failure as an AppError that names only the method and the path. got's own message holds
 * the whole URL, `?access_token=` (and `?secret=` in plain token mode) included, and its `options`
 * the whole request: neither may reach a log line or a job's failedReason in Redis, so neither the
 * message nor the error itself (as `cause`) is kept. Network failures, timeouts, 429 and 5xx are
 * retryable; other HTTP statuses are not. `isTheCall`: the failed request is the caller's call
 * itself, not the token fetch before it.
 */
function httpFailure(method: string, path: string, err: unknown, isTheCall: boolean): unknown {
  if (!(err instanceof RequestError)) return err;
  const status = err.response?.statusCode;
  const what = err instanceof HTTPError ? `HTTP ${status}` : err instanceof ParseError ? `unreadable reply (HTTP ${status})` : err.code;
  const retryable = !(err instanceof HTTPError) || status === 429 || (status ?? 0) >= 500;
  const neverLeft = !(err instanceof HTTPError) && !(err instanceof ParseError) && NOT_CONNECTED.has(err.code);
  return new WeChatHttpError(`${method} /${path}: ${what}`, { mayHaveArrived: isTheCall && !neverLeft, status, retryable });
}

/** The errcode JSON WeChat sends in place of media bytes, if that is what `bytes` holds. */
function errorReply(bytes: Buffer, contentType: string): WeChatReply | undefined {
  const looksJson = /json|text\/plain/i.test(contentType) || bytes.subarray(0, 1).toString() === '{';
  if (!looksJson || bytes.length > 4096) return undefined;
  try {
    const reply = JSON.parse(bytes.toString('utf8')) as WeChatReply;
    return typeof reply.errcode === 'number' && reply.errcode !== 0 ? reply : undefined;
  } catch {
    return undefined;
  }
}
