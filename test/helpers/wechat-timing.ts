import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { stringify } from 'yaml';
import type { FakeDify } from '../fakes/fake-dify.js';
import { APP_ID, AES_KEY, TOKEN, type Stack } from './stack.js';

let seq = 8_100_000_000_000_000_000n;
/** A fresh 64-bit MsgId, as WeChat sends them. */
export const nextMsgId = (): string => String(seq++);

/** A Dify query that makes the fake answer `Echo: <text>` after `delayMs`. */
export const slowQuery = (text: string, delayMs: number): string => `[[scenario:normal+delay=${delayMs}]] ${text}`;

/**
 * A CONFIG_FILE with two accounts on the same Dify: `push` (customer-service mode) and `wait`
 * (waiting mode), each with `extra`; `more` adds accounts of the same base.
 */
export function twoModesConfigFile(
  dify: { baseUrl: string; apiKey: string },
  wechatUrl: string,
  extra: Record<string, unknown> = {},
  more: Record<string, unknown>[] = [],
): string {
  const common = { appId: APP_ID, token: TOKEN, encodingAesKey: AES_KEY, appSecret: 'secret', difyApiBaseUrl: dify.baseUrl, difyApiKey: dify.apiKey, difyAppType: 'chat', wechatApiBaseUrl: wechatUrl, language: 'en_US', ...extra };
  const dir = mkdtempSync(join(tmpdir(), 'wxdify-accounts-'));
  const file = join(dir, 'accounts.yaml');
  const accounts = [{ id: 'push', enableCustomMessage: true }, { id: 'wait', enableCustomMessage: false }, ...more].map((a) => ({ ...a, ...common }));
  writeFileSync(file, stringify({ accounts }));
  return file;
}

/** Sends a text message to `account` the way WeChat does (safe mode, all its attempts within `windowMs` each). */
export function sendText(stack: Stack, windowMs: number, account: string, openId: string, content: string, msgId = nextMsgId()) {
  const sim = stack.simulator('safe', account);
  return { msgId, delivery: sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: content, MsgId: msgId }), windowMs) };
}

/** How many Dify runs asked exactly `query`. */
export function difyCallsFor(dify: FakeDify, query: string): number {
  return dify.runRequests().filter((r) => (r.body as { query: string }).query === query).length;
}

/** When the worker stored the answer of a message (ms since epoch), read from Redis. */
export async function answerReadyAt(redis: Redis, prefix: string, account: string, openId: string, msgId: string): Promise<number> {
  const ans = await redis.hget(`${prefix}:msg:m~${account}~${openId}~${msgId}`, 'ans');
  if (!ans) throw new Error('no stored answer');
  return (JSON.parse(ans) as { readyAt: number }).readyAt;
}

/** Polls `check` until it returns a value or `timeoutMs` passes. */
export async function eventually<T>(check: () => T | undefined | Promise<T | undefined>, timeoutMs = 5000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
