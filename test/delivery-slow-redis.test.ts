import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createLogger, loadConfig } from '../packages/core/src/index.js';
import { WeChatSimulator } from '../packages/core/src/wechat/simulator.js';
import { startIngress, type IngressHandle } from '../apps/ingress/src/index.js';
import { startWorker, type WorkerHandle } from '../apps/worker/src/index.js';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { AES_KEY, APP_ID, TOKEN, testEnv } from './helpers/stack.js';
import { eventually, nextMsgId, slowQuery, twoModesConfigFile } from './helpers/wechat-timing.js';

// WeChat's 5 s shrunk to 1 s; the route's hard cap answers at 950 ms (REPLY_MARGIN_MS 100).
const WINDOW = 1000;

/** A TCP proxy in front of Redis that holds every reply back `delayMs` (in order): a slow Redis. */
async function startSlowProxy(target: URL): Promise<{ url: string; delayMs: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const proxy = {
    url: '',
    delayMs: 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    let releaseAt = 0;
    client.on('data', (chunk) => upstream.write(chunk));
    upstream.on('data', (chunk) => {
      releaseAt = Math.max(releaseAt, Date.now() + proxy.delayMs);
      setTimeout(() => client.writable && client.write(chunk), releaseAt - Date.now());
    });
    for (const s of [client, upstream]) s.on('error', () => undefined).on('close', () => (client.destroy(), upstream.destroy()));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  proxy.url = `redis://127.0.0.1:${(server.address() as { port: number }).port}`;
  return proxy;
}

describe('an ingress on a slow Redis', () => {
  let dify: FakeDify;
  let wechat: FakeWeChat;
  let proxy: Awaited<ReturnType<typeof startSlowProxy>>;
  let ingress: IngressHandle;
  let worker: WorkerHandle;
  let redis: Redis;
  let prefix: string;

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', pingIntervalMs: 200 });
    wechat = await new FakeWeChat().start();
    proxy = await startSlowProxy(new URL(inject('redisUrl')));
    const env = testEnv({
      dify,
      overrides: { CONFIG_FILE: twoModesConfigFile(dify, wechat.url), WECHAT_TIMEOUT_MS: String(WINDOW), REPLY_MARGIN_MS: '100' },
    });
    prefix = env.QUEUE_PREFIX!;
    const logger = createLogger({ level: 'silent' });
    // Only the ingress goes through the slow proxy; the worker talks to Redis directly.
    ingress = await startIngress(loadConfig({ ...env, REDIS_URL: proxy.url }), logger, { port: 0, host: '127.0.0.1' });
    await ingress.ready();
    worker = await startWorker(loadConfig(env), logger, { port: null });
    redis = new Redis(inject('redisUrl'));
    // One ordinary message first: the timing below is not about a cold process.
    const sim = simulator('wait');
    await sim.attempt(sim.messageXml('o_warm_up', { MsgType: 'text', Content: 'warm up', MsgId: nextMsgId() }), WINDOW);
  });
  afterAll(async () => {
    proxy.delayMs = 0;
    await ingress.close();
    await worker.close(1000);
    await Promise.all([dify.close(), wechat.close(), redis.quit(), proxy.close()]);
  });

  const simulator = (account: string) =>
    new WeChatSimulator({ url: `${ingress.url}/wechat/${account}`, token: TOKEN, appId: APP_ID, encodingAesKey: AES_KEY, mode: 'safe' });

  it('answers a non-last attempt with 503 inside the window even when Redis replies after it', async () => {
    const sim = simulator('wait');
    proxy.delayMs = 1500;
    try {
      const first = await sim.attempt(sim.messageXml('o_slow_first', { MsgType: 'text', Content: 'slow redis', MsgId: nextMsgId() }), WINDOW);
      expect(first.status).toBe(503);
      expect(first.ms).toBeLessThan(WINDOW);
    } finally {
      proxy.delayMs = 0;
    }
  });

  it('last attempt: an answer granted after the cap answered is handed over, not lost (waiting mode)', async () => {
    const sim = simulator('wait');
    const openId = 'o_slow_last';
    const msgId = nextMsgId();
    const xml = sim.messageXml(openId, { MsgType: 'text', Content: slowQuery('granted late', 2000), MsgId: msgId });
    expect((await sim.attempt(xml, WINDOW)).status).toBe(503);
    expect((await sim.attempt(xml, WINDOW)).status).toBe(503);
    const key = `${prefix}:msg:m~wait~${openId}~${msgId}`;
    await eventually(async () => ((await redis.hexists(key, 'ans')) ? true : undefined));
    // The attempt is counted at 600 ms; Redis grants the stored answer right after, but its reply
    // reaches the ingress at 1.2 s: the cap has answered by then.
    proxy.delayMs = 600;
    try {
      const third = await sim.attempt(xml, WINDOW);
      expect(third.status).toBe(200);
      expect(third.ms).toBeLessThan(WINDOW);
      expect(third.reply?.Content).toMatch(/reply 1/i);
      await eventually(async () => ((await redis.hget(key, 'state')) === 'wait' ? true : undefined), 5000);
      expect(await redis.zrange(`${prefix}:pend:wait:${openId}`, 0, -1)).toEqual([`m~wait~${openId}~${msgId}`]);
    } finally {
      proxy.delayMs = 0;
    }
    // Replies the proxy still holds back go out first: the follower's `1` comes once Redis is quick again.
    await new Promise((r) => setTimeout(r, 1500));
    const one = await sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: '1', MsgId: nextMsgId() }), WINDOW);
    expect(one.accepted?.reply?.Content).toBe('Echo: granted late');
  });
});
