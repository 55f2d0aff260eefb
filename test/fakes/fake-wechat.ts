import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One call the fake WeChat API received. */
export interface WeChatCall {
  path: string;
  query: Record<string, string>;
  body: Record<string, unknown>;
  at: number;
  /** The errcode answered (0 for success), or the HTTP status / 'dropped' of a scripted transport failure. */
  answer?: number | 'dropped';
}

/** Calls held back by `hold`: they are answered (as they would have been) once released. */
export interface Hold {
  /** How many calls were held so far, released ones included. */
  readonly count: number;
  /** Lets the oldest held call go on. */
  releaseOne(): void;
  /** Lets every held call go on and stops holding. */
  release(): void;
}

/** A customer-service message as the follower would see it. */
export interface PushedMessage {
  touser: string;
  msgtype: string;
  text?: { content: string };
  image?: { media_id: string };
  at: number;
}

/** A temporary media file the fake holds: uploaded by the code under test, or added by a test. */
export interface StoredMedia {
  mediaId: string;
  type: string;
  filename: string;
  contentType: string;
  size: number;
  bytes: Buffer;
  at: number;
}

/**
 * Temporary media limits of media/upload (the doc's list: image 10 MB PNG/JPEG/JPG/GIF, voice 2 MB
 * AMR/MP3, video 10 MB MP4, thumb 64 KB JPG) and the errcodes for a size over them.
 * https://developers.weixin.qq.com/doc/service/api/material/temporary/api_uploadtempmedia
 * Which image limit wins: the doc's detailed list says 10 MB and so do the code and this fake, while
 * research/wechat.md §4.5 (EasyWeChat docs#129, older copies of the doc, and the same page's
 * one-line summary) says 2 MB. The code keeps 10 MB because WeChat's refusal (40009) only turns the
 * image into a link; `limits` lets a test play an account that enforces 2 MB.
 */
const MEDIA_LIMITS: Record<string, { maxBytes: number; extensions: string[]; sizeErrcode: number }> = {
  image: { maxBytes: 10 * 1024 * 1024, extensions: ['png', 'jpeg', 'jpg', 'gif'], sizeErrcode: 40009 },
  voice: { maxBytes: 2 * 1024 * 1024, extensions: ['amr', 'mp3'], sizeErrcode: 40010 },
  video: { maxBytes: 10 * 1024 * 1024, extensions: ['mp4'], sizeErrcode: 40011 },
  thumb: { maxBytes: 64 * 1024, extensions: ['jpg', 'jpeg'], sizeErrcode: 40012 },
};

/**
 * A local stand-in for api.weixin.qq.com: stable_token, customer-service send and typing, and
 * temporary media (media/upload records what it got; media/get serves what a test added with
 * `addMedia` or what was uploaded, and answers an unknown id with errcode 40007 in a text/plain
 * JSON body, as WeChat does; an image push naming media it never had is 40007 too), with WeChat's
 * errcodes. Tokens are real random strings; invalidating one makes calls with it fail with 40001
 * as WeChat does. `failNext(path, errcode)` scripts errors, `failHttpWhen` transport failures (an
 * HTTP status, or a dropped connection), `hold` holds calls back until the test releases them.
 */
export class FakeWeChat {
  readonly calls: WeChatCall[] = [];
  readonly pushed: PushedMessage[] = [];
  /** Files received by media/upload, in order. */
  readonly uploads: StoredMedia[] = [];
  /** This instance's media/upload limits (a copy of {@link MEDIA_LIMITS}; tests may lower them). */
  readonly limits: Record<string, { maxBytes: number; extensions: string[]; sizeErrcode: number }> = structuredClone(MEDIA_LIMITS);
  #media = new Map<string, StoredMedia>();
  tokenRequests = 0;
  #validTokens = new Set<string>();
  #failures: { path: string; errcode: number }[] = [];
  #holds: { rule: (call: WeChatCall) => boolean; waiting: (() => void)[]; count: number; done: boolean }[] = [];
  #invalidateAt: ((call: WeChatCall) => boolean) | undefined;
  #httpRule: ((call: WeChatCall) => number | 'drop' | undefined) | undefined;
  #server: Server;
  url = '';
  /** Called for each customer-service message before it is accepted. */
  onPush: ((msg: PushedMessage) => void) | undefined;

  constructor() {
    this.#server = createServer((req, res) => void this.#handle(req, res));
  }

  /** Listens on `port` (0: a free one). */
  async start(port = 0): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(port, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  /** Makes every token issued so far invalid (as when another party refreshed it with force_refresh). */
  invalidateTokens(): void {
    this.#validTokens.clear();
  }

  /** Invalidates every token issued so far when the first call matching `rule` arrives, before answering it. */
  invalidateTokensAt(rule: (call: WeChatCall) => boolean): void {
    this.#invalidateAt = rule;
  }

  /** Holds back every call `rule` matches until the returned Hold releases it. */
  hold(rule: (call: WeChatCall) => boolean): Hold {
    const hold = { rule, waiting: [] as (() => void)[], count: 0, done: false };
    this.#holds.push(hold);
    return {
      get count() {
        return hold.count;
      },
      releaseOne: () => hold.waiting.shift()?.(),
      release: () => {
        hold.done = true;
        this.#holds = this.#holds.filter((h) => h !== hold);
        for (const go of hold.waiting.splice(0)) go();
      },
    };
  }

  /** Answers calls `rule` picks with that HTTP status (empty body), or drops their connection ('drop'). */
  failHttpWhen(rule: ((call: WeChatCall) => number | 'drop' | undefined) | undefined): void {
    this.#httpRule = rule;
  }

  /** The next call to `path` answers `errcode`. */
  failNext(path: string, errcode: number): void {
    this.#failures.push({ path, errcode });
  }

  /** Answers `errcode` to every call for which `rule` returns one (until `failWhen(undefined)`). */
  failWhen(rule: ((call: WeChatCall) => number | undefined) | undefined): void {
    this.#rule = rule;
  }
  #rule: ((call: WeChatCall) => number | undefined) | undefined;

  /**
   * For each customer-service message `rule` picks: a delay (ms) before WeChat answers `ok`, or
   * 'hang-up': WeChat accepts the message (the follower gets it) and the connection drops before
   * the answer, so the sender cannot know it went out.
   */
  slowPushWhen(rule: ((msg: PushedMessage) => number | 'hang-up' | undefined) | undefined): void {
    this.#slowRule = rule;
  }
  #slowRule: ((msg: PushedMessage) => number | 'hang-up' | undefined) | undefined;

  /** Makes `mediaId` downloadable from media/get (as a follower's voice or image would be). */
  addMedia(mediaId: string, bytes: Buffer, contentType: string, filename = mediaId): void {
    this.#media.set(mediaId, { mediaId, type: contentType.split('/')[0] ?? '', filename, contentType, size: bytes.length, bytes, at: Date.now() });
  }

  /** The texts pushed to `openId`, in order. */
  textsTo(openId: string): string[] {
    return this.pushed.filter((m) => m.touser === openId && m.msgtype === 'text').map((m) => m.text!.content);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const bytes = Buffer.concat(chunks);
    const multipart = (req.headers['content-type'] ?? '').startsWith('multipart/form-data');
    const raw = multipart ? '' : bytes.toString('utf8');
    const body = raw ? (JSON.parse(raw) as Record<string, unknown>) : {};
    const call: WeChatCall = { path: url.pathname, query: Object.fromEntries(url.searchParams), body, at: Date.now() };
    this.calls.push(call);
    const hold = this.#holds.find((h) => !h.done && h.rule(call));
    if (hold) {
      hold.count++;
      await new Promise<void>((resolve) => hold.waiting.push(resolve));
    }
    const http = this.#httpRule?.(call);
    if (http === 'drop') {
      call.answer = 'dropped';
      req.socket.destroy();
      return;
    }
    if (http !== undefined) {
      call.answer = http;
      res.writeHead(http);
      res.end();
      return;
    }
    if (this.#invalidateAt?.(call)) {
      this.#invalidateAt = undefined;
      this.invalidateTokens();
    }
    const send = (obj: unknown) => {
      call.answer = (obj as { errcode?: number }).errcode ?? 0;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    const ruled = this.#rule?.(call);
    if (ruled !== undefined) return send({ errcode: ruled, errmsg: `scripted error ${ruled}` });
    const failIdx = this.#failures.findIndex((f) => f.path === url.pathname);
    if (failIdx >= 0) {
      const [f] = this.#failures.splice(failIdx, 1);
      return send({ errcode: f!.errcode, errmsg: `scripted error ${f!.errcode}` });
    }
    if (url.pathname === '/cgi-bin/stable_token' || (url.pathname === '/cgi-bin/token' && req.method === 'GET')) {
      this.tokenRequests++;
      const params = url.pathname === '/cgi-bin/token' ? call.query : body;
      if (params.grant_type !== 'client_credential' || !params.appid || !params.secret) {
        return send({ errcode: 40002, errmsg: 'invalid grant_type' });
      }
      const token = `tok_${Math.random().toString(36).slice(2)}_${this.tokenRequests}`;
      this.#validTokens.add(token);
      return send({ access_token: token, expires_in: 7200 });
    }
    if (!this.#validTokens.has(call.query.access_token ?? '')) {
      return send({ errcode: 40001, errmsg: 'invalid credential, access_token is invalid or not latest' });
    }
    if (url.pathname === '/cgi-bin/message/custom/send') {
      const msg = { ...(body as unknown as PushedMessage), at: Date.now() };
      // an image message must name media WeChat has: uploaded here, or a follower's (addMedia)
      if (msg.msgtype === 'image' && !this.#media.has(msg.image?.media_id ?? '')) return send({ errcode: 40007, errmsg: 'invalid media_id' });
      this.onPush?.(msg);
      this.pushed.push(msg);
      const slow = this.#slowRule?.(msg);
      if (slow === 'hang-up') return void req.socket.destroy();
      if (slow) await new Promise((r) => setTimeout(r, slow));
      return send({ errcode: 0, errmsg: 'ok' });
    }
    if (url.pathname === '/cgi-bin/message/custom/typing') return send({ errcode: 0, errmsg: 'ok' });
    if (url.pathname === '/cgi-bin/media/upload' && req.method === 'POST') {
      return send(await this.#upload(url.searchParams.get('type') ?? '', req.headers['content-type'] ?? '', bytes));
    }
    if (url.pathname === '/cgi-bin/media/get' && req.method === 'GET') {
      const media = this.#media.get(url.searchParams.get('media_id') ?? '');
      if (!media) {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(JSON.stringify({ errcode: 40007, errmsg: 'invalid media_id' }));
        return;
      }
      res.writeHead(200, {
        'content-type': media.contentType,
        'content-disposition': `attachment; filename="${media.filename}"`,
        'content-length': media.size,
      });
      res.end(media.bytes);
      return;
    }
    res.writeHead(404);
    res.end();
  }

  /** media/upload: one `media` part with a filename; type, format and size checked as WeChat does. */
  async #upload(type: string, contentType: string, bytes: Buffer): Promise<Record<string, unknown>> {
    const limits = this.limits[type];
    if (!limits) return { errcode: 40004, errmsg: 'invalid media type' };
    const form = await new Response(new Uint8Array(bytes), { headers: { 'content-type': contentType } }).formData().catch(() => new FormData());
    const file = form.get('media');
    if (!(file instanceof File)) return { errcode: 41005, errmsg: 'media data missing' };
    const ext = /\.([a-z0-9]+)$/i.exec(file.name)?.[1]?.toLowerCase() ?? '';
    if (!limits.extensions.includes(ext)) return { errcode: 40005, errmsg: 'invalid file type' };
    if (file.size > limits.maxBytes) return { errcode: limits.sizeErrcode, errmsg: `invalid ${type} size` };
    const mediaId = `media_${type}_${this.uploads.length + 1}_${Math.random().toString(36).slice(2, 10)}`;
    const stored: StoredMedia = {
      mediaId, type, filename: file.name, contentType: file.type, size: file.size, bytes: Buffer.from(await file.arrayBuffer()), at: Date.now(),
    };
    this.uploads.push(stored);
    this.#media.set(mediaId, stored);
    return { type, media_id: mediaId, created_at: Math.floor(Date.now() / 1000) };
  }
}
