import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One call the fake WeChat API received. */
export interface WeChatCall {
  path: string;
  query: Record<string, string>;
  body: Record<string, unknown>;
  at: number;
}

/** A customer-service message as the follower would see it. */
export interface PushedMessage {
  touser: string;
  msgtype: string;
  text?: { content: string };
  image?: { media_id: string };
  at: number;
}

/**
 * A local stand-in for api.weixin.qq.com: stable_token, customer-service send and typing, with
 * WeChat's errcodes. Tokens are real random strings; invalidating one makes calls with it fail
 * with 40001 as WeChat does. `failNext(path, errcode)` scripts errors.
 */
export class FakeWeChat {
  readonly calls: WeChatCall[] = [];
  readonly pushed: PushedMessage[] = [];
  tokenRequests = 0;
  #validTokens = new Set<string>();
  #failures: { path: string; errcode: number }[] = [];
  #server: Server;
  url = '';
  /** Called for each customer-service message before it is accepted. */
  onPush: ((msg: PushedMessage) => void) | undefined;

  constructor() {
    this.#server = createServer((req, res) => void this.#handle(req, res));
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
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

  /** The next call to `path` answers `errcode`. */
  failNext(path: string, errcode: number): void {
    this.#failures.push({ path, errcode });
  }

  /** The texts pushed to `openId`, in order. */
  textsTo(openId: string): string[] {
    return this.pushed.filter((m) => m.touser === openId && m.msgtype === 'text').map((m) => m.text!.content);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const body = raw ? (JSON.parse(raw) as Record<string, unknown>) : {};
    const call: WeChatCall = { path: url.pathname, query: Object.fromEntries(url.searchParams), body, at: Date.now() };
    this.calls.push(call);
    const send = (obj: unknown) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    const failIdx = this.#failures.findIndex((f) => f.path === url.pathname);
    if (failIdx >= 0) {
      const [f] = this.#failures.splice(failIdx, 1);
      return send({ errcode: f!.errcode, errmsg: `scripted error ${f!.errcode}` });
    }
    if (url.pathname === '/cgi-bin/stable_token') {
      this.tokenRequests++;
      if (body.grant_type !== 'client_credential' || !body.appid || !body.secret) {
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
      this.onPush?.(msg);
      this.pushed.push(msg);
      return send({ errcode: 0, errmsg: 'ok' });
    }
    if (url.pathname === '/cgi-bin/message/custom/typing') return send({ errcode: 0, errmsg: 'ok' });
    res.writeHead(404);
    res.end();
  }
}
