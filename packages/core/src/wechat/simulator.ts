import { randomInt } from 'node:crypto';
import { createEncryptor } from './crypto.js';
import { cdata } from './reply.js';
import { sha1Signature } from './signature.js';
import { parseXml } from './xml.js';

/** How WeChat talks to the server URL: plain, compatible (both forms) or safe (encrypted only). */
export type CallbackMode = 'plain' | 'compatible' | 'safe';

export interface SimulatorOptions {
  /** The server URL configured in WeChat, e.g. `http://localhost:8080/wechat`. */
  url: string;
  token: string;
  appId?: string;
  encodingAesKey?: string;
  mode?: CallbackMode;
  /** The official account's original id (ToUserName). */
  accountId?: string;
}

/** A message delivered the way WeChat does it: what each attempt got, and when (ms after the first). */
export interface DeliveryResult {
  attempts: (AttemptResult & { startedAt: number })[];
  /** The attempt WeChat accepted (HTTP 200 in time), if any. */
  accepted: (AttemptResult & { startedAt: number; attempt: number }) | undefined;
}

/** What one callback attempt got back. */
export interface AttemptResult {
  status: number;
  body: string;
  /** The reply's fields, decrypted when the request was encrypted; undefined for `success`/empty. */
  reply: Record<string, string> | undefined;
  ms: number;
  /** Why no HTTP answer came (status 0): `timeout`, or the network error's code. */
  error?: string;
}

/**
 * Sends callbacks the way WeChat does: signed query, optional AES envelope, and the reply opened
 * again. Used by the tests and by `npm run sim` to check a deployment before pointing WeChat at it.
 */
export class WeChatSimulator {
  readonly #opts: Required<Pick<SimulatorOptions, 'url' | 'token' | 'mode' | 'accountId'>> & SimulatorOptions;

  constructor(opts: SimulatorOptions) {
    this.#opts = { mode: 'plain', accountId: 'gh_simulator', ...opts };
    if (this.#opts.mode !== 'plain' && (!opts.encodingAesKey || !opts.appId)) {
      throw new Error(`${this.#opts.mode} mode needs appId and encodingAesKey`);
    }
  }

  /** The XML body of a message from `fromUser` with the given fields (`MsgType` included). */
  messageXml(fromUser: string, fields: Record<string, string>, createTime = Math.floor(Date.now() / 1000)): string {
    const all = { ToUserName: this.#opts.accountId, FromUserName: fromUser, CreateTime: String(createTime), ...fields };
    const inner = Object.entries(all)
      .map(([k, v]) => (/^\d+$/.test(v) ? `<${k}>${v}</${k}>` : `<${k}>${cdata(v)}</${k}>`))
      .join('');
    return `<xml>${inner}</xml>`;
  }

  /** Builds the signed request WeChat would send for `xml` (one attempt). */
  buildRequest(xml: string, opts: { timestamp?: string; nonce?: string } = {}): { url: string; body: string } {
    const timestamp = opts.timestamp ?? String(Math.floor(Date.now() / 1000));
    const nonce = opts.nonce ?? String(randomInt(1_000_000, 1_000_000_000));
    const { token, mode } = this.#opts;
    const query = new URLSearchParams({ signature: sha1Signature(token, timestamp, nonce), timestamp, nonce });
    let body = xml;
    if (mode !== 'plain') {
      const encrypt = this.#encryptor().encrypt(xml);
      query.set('encrypt_type', 'aes');
      query.set('msg_signature', sha1Signature(token, timestamp, nonce, encrypt));
      // Compatible mode keeps the plaintext fields beside the envelope; safe mode sends only the envelope.
      const plain = mode === 'compatible' ? xml.replace(/^<xml>|<\/xml>$/g, '') : `<ToUserName>${cdata(this.#opts.accountId)}</ToUserName>`;
      body = `<xml>${plain}<Encrypt>${cdata(encrypt)}</Encrypt></xml>`;
    }
    query.set('openid', 'simulator');
    return { url: `${this.#opts.url}?${query}`, body };
  }

  /** Sends one attempt; WeChat gives up on it after `timeoutMs` (5 s). */
  async attempt(xml: string, timeoutMs = 5000): Promise<AttemptResult> {
    const { url, body } = this.buildRequest(xml);
    const started = Date.now();
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'text/xml' },
        body,
        signal: AbortSignal.timeout(timeoutMs),
      });
      const text = await res.text();
      return { status: res.status, body: text, reply: this.openReply(text), ms: Date.now() - started };
    } catch (err) {
      // Cut at WeChat's limit, or the connection died: for WeChat both are a failed attempt.
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const error = (err as Error).name === 'TimeoutError' ? 'timeout' : (cause?.code ?? cause?.message ?? (err as Error).message);
      return { status: 0, body: '', reply: undefined, ms: Date.now() - started, error };
    }
  }

  /**
   * Delivers `xml` on WeChat's clock: up to three attempts, `windowMs` (5 s) apart, each cut at
   * `windowMs`; the first HTTP 200 that arrives in time ends it (`success` included).
   */
  async deliver(xml: string, windowMs = 5000): Promise<DeliveryResult> {
    const start = Date.now();
    const attempts: DeliveryResult['attempts'] = [];
    for (let n = 1; n <= 3; n++) {
      const wait = start + (n - 1) * windowMs - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      const startedAt = Date.now() - start;
      const result = { ...(await this.attempt(xml, windowMs)), startedAt };
      attempts.push(result);
      if (result.status === 200) return { attempts, accepted: { ...result, attempt: n } };
    }
    return { attempts, accepted: undefined };
  }

  /** Opens a reply body: parses it and decrypts the envelope when there is one. */
  openReply(text: string): Record<string, string> | undefined {
    if (!text.startsWith('<xml>')) return undefined;
    const fields = parseXml(text);
    if (fields.Encrypt === undefined) return fields;
    const signature = sha1Signature(this.#opts.token, fields.TimeStamp ?? '', fields.Nonce ?? '', fields.Encrypt);
    if (signature !== fields.MsgSignature) throw new Error('reply MsgSignature does not match');
    return parseXml(this.#encryptor().decrypt(fields.Encrypt));
  }

  #encryptor() {
    return createEncryptor({ appId: this.#opts.appId!, token: this.#opts.token, encodingAesKey: this.#opts.encodingAesKey! });
  }
}
