// The parts of one message, each measured alone in the bench's own process: what one callback's
// verification, XML, reply, HTTP exchange, Koa, log line, delivery scripts, BullMQ job, Dify call,
// SSE parsing and answer shaping cost in CPU. The whole run's rows say what the processes spend
// together; these say which part of it is which, with the same code and the same fakes.
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import Koa from 'koa';
import Router from '@koa/router';
import type { DestinationStream } from 'pino';
import {
  ANSWER_JOB_OPTIONS,
  DeliveryStore,
  buildTextReplyXml,
  checkSignature,
  createDifyClient,
  createLogger,
  decodeRequest,
  logDestination,
  encodeReply,
  SseDecoder,
  shapeAnswer,
  splitText,
  withBindings,
  type Logger,
  type WeChatAccountKeys,
} from '@wxdify/core';
import { WeChatSimulator } from '../../packages/core/src/wechat/simulator.js';
import { Client } from './load.js';
import { cpuMs } from './processes.js';
import { diffCommandStats, parseCommandStats, percentile } from './report.js';

/** One part's cost per message: CPU of the process that runs it, and of redis-server when it talks to Redis. */
export interface PartCost {
  part: string;
  /** Which of our processes pays it in production. */
  runsIn: 'ingress' | 'worker' | 'both' | 'reference';
  us: number;
  redisUs?: number;
  redisCommands?: number;
}

/** What the parts are measured against: the run's fakes and Redis. */
export interface PartsTarget {
  account: WeChatAccountKeys;
  difyBaseUrl: string;
  difyApiKey: string;
  redisUrl: string;
  redisPid: number;
  /** Where the measured log lines go. */
  dir: string;
  /** Messages per part (async parts run 32 at a time). */
  n: number;
}

const CONCURRENCY = 32;
const OPEN_ID = 'oParts0000000000000000000001';

/** Measures every part; the order is a message's path through the ingress, Redis and the worker. */
export async function measureParts(t: PartsTarget): Promise<PartCost[]> {
  const rows: PartCost[] = [];
  const add = (part: string, runsIn: PartCost['runsIn'], cost: Omit<PartCost, 'part' | 'runsIn'>) => rows.push({ part, runsIn, ...cost });
  const plain = callback(t, 'plain');
  const safe = callback(t, 'safe');
  // the services' destination (createLogger's default, to stdout there)
  const logFile = logDestination(join(t.dir, 'parts.log'));
  const dify = createDifyClient({
    baseUrl: t.difyBaseUrl, apiKey: t.difyApiKey, appType: 'chat', queryVariable: 'query', idleTimeoutMs: 30_000, totalTimeoutMs: 60_000,
    logger: createLogger({ level: 'warn', name: 'parts', destination: logFile }),
  });
  // the answer of the fakes, for the reply and the shaping
  const answer = (await dify.ask({ query: 'hello', user: OPEN_ID, inputs: {} })).text;
  const reply = () => buildTextReplyXml({ toUser: OPEN_ID, fromUser: 'gh_parts', content: answer });

  add('signature check (SHA-1)', 'ingress', { us: await perOp(t.n, () => checkSignature(t.account, plain.query)) });
  add('callback decode, plain: signature, XML (sax), message', 'ingress', { us: await perOp(t.n, () => decodeRequest(t.account, plain.query, plain.body)) });
  add('callback decode, safe mode: + msg_signature, AES', 'ingress', { us: await perOp(t.n, () => decodeRequest(t.account, safe.query, safe.body)) });
  add('reply XML, plain', 'ingress', { us: await perOp(t.n, () => encodeReply(t.account, reply(), false)) });
  add('reply XML, safe mode: + AES, signature', 'ingress', { us: await perOp(t.n, () => encodeReply(t.account, reply(), true, { timestamp: '1700000000', nonce: '12345' })) });

  const http = await measureHttp(t.n);
  add('HTTP exchange through Koa and @koa/router (server and client)', 'ingress', { us: http.koa });
  add('the same through a bare node:http server', 'reference', { us: http.raw });
  add('log line: pino formatting, redaction, bindings, its share of a buffered write', 'both', { us: await measureLogLine(t.n, logFile) });

  const redis = new Redis(t.redisUrl);
  try {
    add('delivery scripts: attempt, answer granted to it (2 round trips)', 'both', await withRedisCost(t, redis, () => measureDeliveryScripts(t.n, redis, answer)));
    add('BullMQ job: add, fetch, complete', 'both', await measureBullJob(t, redis));
  } finally {
    redis.disconnect();
  }

  add('Dify call with got: request, SSE stream, parse', 'worker', {
    us: await perAsyncOp(t.n, (i) => dify.ask({ query: `hello ${i}`, user: `${OPEN_ID}${i % CONCURRENCY}`, inputs: {} })),
  });
  const raw = await measureRawDify(t);
  add('the same stream read with node:http, unparsed', 'reference', { us: raw.us });
  add('SSE parsing of the answer (eventsource-parser, JSON)', 'worker', { us: await measureSse(raw.frames, t.n, logFile) });
  add('answer shaping (markdown, split)', 'worker', { us: await perOp(t.n, (i) => splitText(shapeAnswer(`${answer} ${i}`, { difyOrigin: 'http://127.0.0.1' }).text)) });
  return rows;
}

/** A signed callback of one text message as WeChat sends it in `mode`. */
function callback(t: PartsTarget, mode: 'plain' | 'safe') {
  const sim = new WeChatSimulator({ url: 'http://127.0.0.1/wechat', token: t.account.token, appId: t.account.appId, encodingAesKey: t.account.encodingAesKey!, mode });
  const { url, body } = sim.buildRequest(sim.messageXml(OPEN_ID, { MsgType: 'text', Content: 'hello', MsgId: '9000000000000001' }));
  return { query: Object.fromEntries(new URL(url).searchParams), body };
}

/** µs of this process's CPU per call of a synchronous `op`: see {@link leastOf}. */
async function perOp(n: number, op: (i: number) => unknown): Promise<number> {
  return (await leastOf(n, 3, async (count, offset) => {
    for (let i = 0; i < count; i++) op(offset + i);
  })).us;
}

/** The same for an async `op`, `CONCURRENCY` calls at a time, the least of `rounds` runs. */
async function perAsyncOp(n: number, op: (i: number) => Promise<unknown>, rounds = 3): Promise<number> {
  return (await leastOf(n, rounds, inParallel(op))).us;
}

/** A run of `count` calls of `op` numbered from `offset`, `CONCURRENCY` at a time. */
function inParallel(op: (i: number) => Promise<unknown>): (count: number, offset: number) => Promise<void> {
  return async (count, offset) => {
    let next = 0;
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) await op(offset + next++);
    }));
  };
}

/**
 * `run` (which handles `count` messages numbered from `offset`) once as a warm-up of half of `n`,
 * then `rounds` times `n`: the least µs of this process's CPU per message, and how many messages
 * ran. The least, because what else the process and the machine do (GC threads, a tier-up of the
 * JIT, a timer of the idle services) only ever adds.
 */
async function leastOf(n: number, rounds: number, run: (count: number, offset: number) => Promise<void>): Promise<{ us: number; messages: number }> {
  const warmup = Math.ceil(n / 2);
  await run(warmup, 0);
  let us = Infinity;
  for (let round = 1; round <= rounds; round++) {
    const before = process.cpuUsage();
    await run(n, round * n);
    us = Math.min(us, cpuUs(before) / n);
  }
  return { us, messages: warmup + rounds * n };
}

function cpuUs(before: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(before);
  return d.user + d.system;
}

/** Runs `measure` and adds redis-server's CPU and commands per message to what it measured. */
async function withRedisCost(t: PartsTarget, redis: Redis, measure: () => Promise<{ us: number; messages: number }>): Promise<Omit<PartCost, 'part' | 'runsIn'>> {
  const stats = async () => parseCommandStats(await redis.info('commandstats'));
  const [commands, redisMs] = [await stats(), cpuMs(t.redisPid)];
  const { us, messages } = await measure();
  const redisUs = ((cpuMs(t.redisPid) - redisMs) * 1000) / messages;
  const total = [...diffCommandStats(commands, await stats()).values()].reduce((a, b) => a + b, 0);
  return { us, redisUs, redisCommands: (total - 1) / messages }; // less the INFO call itself
}

/**
 * A Koa app with a router (as the ingress has) against a bare node:http server, both reading the
 * POST's body and answering it; each measured 5 times, alternating, and the medians kept.
 */
async function measureHttp(n: number): Promise<{ raw: number; koa: number }> {
  const body = '<xml><ToUserName><![CDATA[gh_parts]]></ToUserName></xml>';
  const client = new Client();
  const exchange = async (server: Server) => {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/wechat`;
    try {
      return await perAsyncOp(n, () => client.post(url, body, 5000), 1);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  };
  const bare = () => createServer((req, res) => {
    req.resume();
    // with its length, as Koa sends it (not chunked)
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/xml', 'content-length': 7 }).end('success'));
  });
  const koaApp = () => {
    const app = new Koa();
    const router = new Router();
    router.post('/wechat', async (ctx) => {
      ctx.req.resume();
      await once(ctx.req, 'end');
      ctx.type = 'application/xml';
      ctx.body = 'success';
    });
    app.use(router.routes());
    return createServer(app.callback());
  };
  const raws: number[] = [];
  const koas: number[] = [];
  for (let round = 0; round < 5; round++) {
    raws.push(await exchange(bare()));
    koas.push(await exchange(koaApp()));
  }
  const [raw, koa] = [percentile(raws, 50), percentile(koas, 50)];
  client.close();
  return { raw, koa };
}

/** One request's line, as the ingress writes it (bindings, then the line), to a file. */
function measureLogLine(n: number, file: DestinationStream): Promise<number> {
  const logger: Logger = createLogger({ level: 'info', name: 'parts', destination: file });
  return perOp(n, (i) => {
    withBindings(logger, { reqId: `r${i}`, account: 'default' })
      .info({ msgId: '9000000000000001', msgType: 'text', outcome: 'reply', attempt: 1, ms: 12 }, 'answered');
  });
}

/**
 * The ingress's attempt (opening its grant window) and the worker's answer, granted to that
 * attempt in the same script: the delivery state machine's round trips of one message answered
 * while its first attempt waits (the answer reaches the attempt in the PUBLISH, not measured here).
 */
function measureDeliveryScripts(n: number, redis: Redis, text: string): Promise<{ us: number; messages: number }> {
  const store = new DeliveryStore(redis, `parts-${process.pid}`);
  const answer = { parts: [{ type: 'text' as const, text }], readyAt: Date.now() };
  return leastOf(n, 3, inParallel(async (i) => {
    const jobId = `m~default~${OPEN_ID}~${i}`;
    const openId = `${OPEN_ID}${i}`;
    await store.recordAttempt(jobId, { account: 'default', openId, queued: true, allowance: undefined }, Date.now(), [Date.now() + 4500, Date.now() + 3500]);
    await store.saveAnswer(jobId, answer, { account: 'default', openId, dueAfterMs: 16_500 });
  }));
}

/**
 * One answer job through BullMQ with the production options, added and processed (a no-op) in
 * this process: each run adds its jobs 32 at a time and waits until all are completed. Redis is
 * counted around the jobs only, not the worker's start and close.
 */
async function measureBullJob(t: PartsTarget, redis: Redis): Promise<Omit<PartCost, 'part' | 'runsIn'>> {
  const connection = { url: t.redisUrl, maxRetriesPerRequest: null };
  const prefix = `parts-${process.pid}`;
  const queue = new Queue('answer', { connection, prefix });
  let left = 0;
  let allDone: (() => void) | undefined;
  const worker = new Worker('answer', async () => ({ parts: 1, state: 'passive' }), { connection, prefix, concurrency: 300, lockDuration: 15_000 });
  worker.on('completed', () => {
    if (--left === 0) allDone?.();
  });
  await worker.waitUntilReady();
  const message = { kind: 'text', msgType: 'text', content: 'hello', fromUserName: OPEN_ID, toUserName: 'gh_parts', createTime: 1700000000, msgId: '9' };
  const addAll = inParallel((i) => queue.add('answer', { account: 'default', message: { ...message, msgId: String(i) }, receivedAt: Date.now() }, { ...ANSWER_JOB_OPTIONS, jobId: `m~default~${OPEN_ID}~${i}` }));
  try {
    return await withRedisCost(t, redis, () => leastOf(t.n, 3, async (count, offset) => {
      left = count;
      const done = new Promise<void>((resolve) => (allDone = resolve));
      await addAll(count, offset);
      await done;
    }));
  } finally {
    await worker.close();
    await queue.obliterate({ force: true }).catch(() => undefined);
    await queue.close();
  }
}

/** The Dify client's request read whole with the bench's node:http client (a keep-alive agent, as got's), and the answer's frames. */
async function measureRawDify(t: PartsTarget): Promise<{ us: number; frames: Buffer[] }> {
  const client = new Client();
  const headers = { authorization: `Bearer ${t.difyApiKey}`, 'content-type': 'application/json', accept: 'text/event-stream' };
  const rawPost = (i: number) => {
    const body = JSON.stringify({ query: `hello ${i}`, user: `${OPEN_ID}${i % CONCURRENCY}`, inputs: {}, response_mode: 'streaming' });
    return client.post(`${t.difyBaseUrl}/chat-messages`, body, 30_000, headers);
  };
  try {
    const us = await perAsyncOp(t.n, rawPost);
    // the answer's frames, one chunk each, as the fake writes them
    const frames = (await rawPost(0)).body.split('\n\n').filter(Boolean).map((f) => Buffer.from(`${f}\n\n`));
    return { us, frames };
  } finally {
    client.close();
  }
}

/** The Dify client's SSE decoding of one answer's frames, one chunk per frame (as the fake writes them). */
function measureSse(frames: Buffer[], n: number, file: DestinationStream): Promise<number> {
  const log = createLogger({ level: 'warn', destination: file });
  return perOp(n, () => {
    const decoder = new SseDecoder({ log });
    for (const frame of frames) decoder.feed(frame);
    decoder.end();
  });
}
