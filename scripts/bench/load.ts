// The load generator: followers that talk to a callback URL the way WeChat does.
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { WeChatSimulator } from '../../packages/core/src/wechat/simulator.js';

/** WeChat gives each callback attempt 5 s, and sends the next attempt 5 s after the previous one. */
const WECHAT_ATTEMPT_MS = 5000;
const WECHAT_ATTEMPTS = 3;

/** Wall-clock ms with sub-ms precision, comparable across the bench's processes. */
export const wallNow = () => performance.timeOrigin + performance.now();

/** One HTTP response as the load generator saw it; status 0 when cut at the timeout. */
export interface Response {
  status: number;
  body: string;
  /** wallNow() when the last byte arrived (or the request was cut). */
  at: number;
}

/** A keep-alive HTTP/1.1 client (node:http, lighter than fetch) shared by all followers. */
export class Client {
  readonly #agent = new Agent({ keepAlive: true, maxSockets: Infinity });

  /** POSTs `body` to `url` (XML unless `headers` say otherwise); gives up like WeChat after `timeoutMs`. */
  post(url: string, body: string, timeoutMs: number, headers: Record<string, string> = { 'content-type': 'text/xml' }): Promise<Response> {
    return new Promise((resolve, reject) => {
      const req = request(url, {
        method: 'POST',
        agent: this.#agent,
        headers: { ...headers, 'content-length': Buffer.byteLength(body) },
      });
      let cut = false;
      const timer = setTimeout(() => {
        cut = true;
        req.destroy();
        resolve({ status: 0, body: '', at: wallNow() });
      }, timeoutMs);
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), at: wallNow() });
        });
        res.on('error', () => undefined);
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        if (!cut) reject(err);
      });
      req.end(body);
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}

/** What a closed-loop run measured inside its window. */
export interface ClosedLoopResult {
  /** Messages answered correctly whose answer arrived inside the window. */
  answered: number;
  /** Wrong, failed or missing answers (any time). */
  errors: number;
  firstError?: string;
  /** Latencies (ms) of the answered messages that started and ended inside the window. */
  latencies: number[];
  windowMs: number;
}

/**
 * `followers` distinct OpenIDs, each sending its next text message as soon as the previous one is
 * answered, for `warmupMs + durationMs`; only the window after the warm-up counts. `onWindow` runs
 * at the window's start and end (for counters that must cover exactly the same span).
 */
export async function runClosedLoop(opts: {
  client: Client;
  simulator: WeChatSimulator;
  followers: number;
  openIdPrefix: string;
  warmupMs: number;
  durationMs: number;
  expected: (query: string) => string;
  onWindow?: { start: () => void; end: () => void };
}): Promise<ClosedLoopResult> {
  const t0 = wallNow();
  const windowStart = t0 + opts.warmupMs;
  const windowEnd = windowStart + opts.durationMs;
  const result: ClosedLoopResult = { answered: 0, errors: 0, latencies: [], windowMs: opts.durationMs };
  // Each window callback runs once: from its timer, or right after the loop when the last reply
  // came in before the timer (the loop stops on the clock, and a timer may fire a little late).
  const once = (fn: (() => void) | undefined) => {
    let done = false;
    return () => {
      if (!done) fn?.();
      done = true;
    };
  };
  const [start, end] = [once(opts.onWindow?.start), once(opts.onWindow?.end)];
  const timers = [setTimeout(start, opts.warmupMs), setTimeout(end, opts.warmupMs + opts.durationMs)];
  let msgId = 0;
  const follower = async (i: number) => {
    const openId = `${opts.openIdPrefix}${String(i).padStart(4, '0')}`;
    while (wallNow() < windowEnd) {
      const id = String(7_000_000_000_000_000 + ++msgId);
      const content = `hello ${id}`;
      const { url, body } = opts.simulator.buildRequest(opts.simulator.messageXml(openId, { MsgType: 'text', Content: content, MsgId: id }));
      const started = wallNow();
      const res = await opts.client.post(url, body, WECHAT_ATTEMPT_MS);
      const ok = res.status === 200 && res.body.includes(opts.expected(content));
      if (!ok) {
        result.errors++;
        result.firstError ??= `status ${res.status}: ${res.body.slice(0, 200)}`;
        continue;
      }
      if (res.at < windowStart || res.at > windowEnd) continue;
      result.answered++;
      if (started >= windowStart) result.latencies.push(res.at - started);
    }
  };
  await Promise.all(Array.from({ length: opts.followers }, (_, i) => follower(i)));
  timers.forEach(clearTimeout);
  start();
  end();
  return result;
}

/** Several windows as one: counts and window lengths summed, latencies concatenated, the first error kept. */
export function mergeLoads(loads: ClosedLoopResult[]): ClosedLoopResult {
  const merged: ClosedLoopResult = { answered: 0, errors: 0, latencies: [], windowMs: 0 };
  for (const l of loads) {
    merged.answered += l.answered;
    merged.errors += l.errors;
    merged.firstError ??= l.firstError;
    for (const ms of l.latencies) merged.latencies.push(ms);
    merged.windowMs += l.windowMs;
  }
  return merged;
}

/**
 * Messages at a fixed rate (open loop), round-robin over `followers` OpenIDs, for `warmupMs +
 * durationMs`. In a closed loop the latency is only the followers' number over the throughput
 * (Little's law); at a rate well below saturation it is the time one message really takes.
 */
export async function runPaced(opts: {
  client: Client;
  simulator: WeChatSimulator;
  ratePerS: number;
  followers: number;
  openIdPrefix: string;
  warmupMs: number;
  durationMs: number;
  expected: (query: string) => string;
}): Promise<ClosedLoopResult> {
  const t0 = wallNow();
  const windowStart = t0 + opts.warmupMs;
  const windowEnd = windowStart + opts.durationMs;
  const result: ClosedLoopResult = { answered: 0, errors: 0, latencies: [], windowMs: opts.durationMs };
  const inFlight: Promise<void>[] = [];
  const send = async (k: number) => {
    const openId = `${opts.openIdPrefix}${String(k % opts.followers).padStart(4, '0')}`;
    const id = String(6_000_000_000_000_000 + k);
    const content = `hello ${id}`;
    const { url, body } = opts.simulator.buildRequest(opts.simulator.messageXml(openId, { MsgType: 'text', Content: content, MsgId: id }));
    const started = wallNow();
    const res = await opts.client.post(url, body, WECHAT_ATTEMPT_MS);
    if (res.status !== 200 || !res.body.includes(opts.expected(content))) {
      result.errors++;
      result.firstError ??= `status ${res.status}: ${res.body.slice(0, 200)}`;
    } else if (started >= windowStart && started < windowEnd) {
      result.answered++;
      result.latencies.push(res.at - started);
    }
  };
  for (let k = 0; ; k++) {
    const at = t0 + (k * 1000) / opts.ratePerS;
    if (at >= windowEnd) break;
    if (at > wallNow()) await sleep(at - wallNow());
    inFlight.push(send(k));
  }
  await Promise.all(inFlight);
  return result;
}

/** How one follower's message went, WeChat-style. */
export interface AttemptsResult {
  openId: string;
  sentAt: number;
  /** Attempt (1-3) whose passive reply carried the answer. */
  answeredBy?: number;
  /** wallNow() when the answer's reply arrived. */
  answeredAt?: number;
  /** The last attempt's reply when it was not the answer (timeout text, `success`). */
  other?: string;
  statuses: number[];
}

/**
 * Sends one text message per follower, all at once, and retries like WeChat: attempt n starts
 * 5 s after attempt n-1 started (never before it ended) and is cut after 5 s; a reply other than
 * 503 or a cut ends the retries.
 */
export async function runWeChatAttempts(opts: {
  client: Client;
  simulator: WeChatSimulator;
  openIds: string[];
  isAnswer: (body: string, query: string) => boolean;
}): Promise<AttemptsResult[]> {
  const one = async (openId: string, n: number): Promise<AttemptsResult> => {
    const id = String(8_000_000_000_000_000 + n);
    const content = `slow question ${id}`;
    const xml = opts.simulator.messageXml(openId, { MsgType: 'text', Content: content, MsgId: id });
    const sentAt = wallNow();
    const result: AttemptsResult = { openId, sentAt, statuses: [] };
    for (let attempt = 1; attempt <= WECHAT_ATTEMPTS; attempt++) {
      const startAt = sentAt + (attempt - 1) * WECHAT_ATTEMPT_MS;
      if (startAt > wallNow()) await sleep(startAt - wallNow());
      const { url, body } = opts.simulator.buildRequest(xml);
      const res = await opts.client.post(url, body, WECHAT_ATTEMPT_MS);
      result.statuses.push(res.status);
      if (res.status === 200 && opts.isAnswer(res.body, content)) {
        result.answeredBy = attempt;
        result.answeredAt = res.at;
        return result;
      }
      if (res.status === 200) {
        result.other = res.body.slice(0, 300);
        return result;
      }
    }
    return result;
  };
  return Promise.all(opts.openIds.map((openId, n) => one(openId, n)));
}
