import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../packages/core/src/index.js';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { simulatorFor, startProcess, waitForReady, type ServiceProcess } from './helpers/processes.js';
import { freePort, startRedisServer, type RedisServer } from './helpers/redis-server.js';
import { APP_ID, testEnv } from './helpers/stack.js';
import { eventually } from './helpers/wechat-timing.js';

// The whole service on a real three-node Redis Cluster (redis-server --cluster-enabled yes, joined
// with redis-cli --cluster create): with a hash tag in QUEUE_PREFIX every key shares one slot, so
// BullMQ's multi-key scripts and ours run; without one the processes refuse to start.

const run = promisify(execFile);
let msgSeq = 7_500_000_000_000_000_000n;
const nextMsgId = () => String(msgSeq++);
const PREFIX = '{wxdify}';
const WINDOW_MS = 2000;

describe('on a three-node Redis Cluster', () => {
  let dify: FakeDify;
  let wechat: FakeWeChat;
  let nodes: RedisServer[] = [];
  let seedUrl: string;
  const procs: ServiceProcess[] = [];
  const env = (overrides: Record<string, string> = {}) =>
    testEnv({
      dify,
      overrides: { REDIS_URL: seedUrl, QUEUE_PREFIX: PREFIX, WECHAT_TIMEOUT_MS: String(WINDOW_MS), MAX_CONTINUE_COUNT: '5', LOG_LEVEL: 'warn', ...overrides },
    });

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', answer: (q) => `Echo: ${q}` });
    wechat = await new FakeWeChat().start();
    nodes = await startCluster(3);
    // Seeded with a node that does not hold {wxdify}'s slot: the clients must follow the cluster's map.
    seedUrl = `redis+cluster://127.0.0.1:${nodes[1]!.port}`;
  }, 30_000);
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.kill()));
    await Promise.all(nodes.filter((n) => n.process.signalCode === null).map((n) => n.stop()));
    for (const n of nodes) rmSync(n.dir, { recursive: true, force: true }); // restarted nodes keep theirs
    await dify?.close();
    await wechat?.close();
  });

  it('refuses to start when QUEUE_PREFIX has no hash tag, naming QUEUE_PREFIX', async () => {
    for (const kind of ['ingress', 'worker'] as const) {
      await expect(startProcess(kind, env({ QUEUE_PREFIX: 'wxdify' }))).rejects.toThrow(/exited with 1[\s\S]*QUEUE_PREFIX[\s\S]*hash tag/);
    }
    const cfg = (redisUrl: string, prefix: string) => () => loadConfig(env({ REDIS_URL: redisUrl, QUEUE_PREFIX: prefix }));
    const plainUrl = `redis://127.0.0.1:${nodes[0]!.port}`;
    expect(cfg(`${plainUrl}?cluster=1`, 'wxdify')).toThrow(ConfigError);
    expect(cfg(seedUrl, 'wx{}dify')).toThrow(/QUEUE_PREFIX/); // an empty tag hashes the whole key
    expect(cfg(seedUrl, 'wx:{tenant1}')).not.toThrow();
    expect(cfg(plainUrl, 'wxdify')).not.toThrow(); // a single Redis needs no tag
  });

  it('answers end to end, keeps the conversation and hands a late answer to `1`, all keys in one slot', async () => {
    const ingress = await startProcess('ingress', env());
    const worker = await startProcess('worker', env());
    procs.push(ingress, worker);
    await Promise.all([waitForReady(ingress.url, 200), waitForReady(worker.url, 200)]);
    const sim = simulatorFor(ingress);

    const openId = 'o_cluster';
    const first = await sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: 'hello cluster', MsgId: nextMsgId() }), WINDOW_MS);
    expect(first).toMatchObject({ status: 200, reply: { Content: 'Echo: hello cluster' } });
    const second = await sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: 'again', MsgId: nextMsgId() }), WINDOW_MS);
    expect(second.reply?.Content).toBe('Echo: again');
    const runs = dify.runRequests().filter((r) => (r.body as { user: string }).user === openId);
    expect(runs).toHaveLength(2);
    const [conversationId] = dify.conversationIds(openId);
    expect((runs[0]!.body as { conversation_id?: string }).conversation_id ?? '').toBe('');
    expect((runs[1]!.body as { conversation_id?: string }).conversation_id).toBe(conversationId);

    // Waiting mode: Dify answers after WeChat's three attempts; the follower's `1` gets it.
    const slowUser = 'o_cluster_slow';
    const late = await sim.deliver(sim.messageXml(slowUser, { MsgType: 'text', Content: '[[scenario:normal+delay=6000]] slow one', MsgId: nextMsgId() }), WINDOW_MS);
    expect(late.attempts.map((a) => a.status)).toEqual([503, 503, 200]);
    expect(late.accepted?.reply?.Content).not.toMatch(/^Echo/);
    let fetched: string | undefined;
    for (let i = 0; i < 4 && !fetched?.startsWith('Echo'); i++) {
      const one = await sim.attempt(sim.messageXml(slowUser, { MsgType: 'text', Content: '1', MsgId: nextMsgId() }), WINDOW_MS);
      fetched = one.reply?.Content;
    }
    expect(fetched).toBe('Echo: slow one');
    expect(dify.runRequests().filter((r) => (r.body as { user: string }).user === slowUser)).toHaveLength(1);

    // Every key the service wrote (BullMQ's and ours) sits in the slot of the hash tag.
    const seed = nodeClient(nodes[0]!);
    const slot = Number(await seed.cluster('KEYSLOT', PREFIX));
    seed.disconnect();
    const counts: number[] = [];
    for (const node of nodes) {
      const client = nodeClient(node);
      const inSlot = Number(await client.cluster('COUNTKEYSINSLOT', slot));
      expect(await client.dbsize()).toBe(inSlot);
      counts.push(inSlot);
      client.disconnect();
    }
    expect(counts.filter((c) => c > 0)).toHaveLength(1);
    expect(counts[1]).toBe(0);
    expect(counts.reduce((a, b) => a + b)).toBeGreaterThan(5);
    for (const proc of [ingress, worker]) {
      expect(proc.child.exitCode).toBeNull();
      // the safety poll (one script over many message keys) ran during the slow answer's waits
      expect((await proc.flushedLogs()).filter((l) => /CROSSSLOT|MOVED|uncaught|unhandled|safety poll failed/i.test(l))).toEqual([]);
    }
  });

  it('pushes a late answer in customer-service mode: access token, token lock, push queue and push lock on the cluster', async () => {
    // Its own prefix in the same slot, so the waiting-mode processes above do not take its jobs.
    const prefix = `${PREFIX}:cs`;
    const csEnv = env({ QUEUE_PREFIX: prefix, ENABLE_CUSTOM_MESSAGE: 'true', WECHAT_API_BASE_URL: wechat.url, LANGUAGE: 'en_US' });
    const ingress = await startProcess('ingress', csEnv);
    const worker = await startProcess('worker', csEnv);
    procs.push(ingress, worker);
    await Promise.all([waitForReady(ingress.url, 200), waitForReady(worker.url, 200)]);
    const sim = simulatorFor(ingress);

    const openId = 'o_cluster_push';
    const tokensBefore = wechat.tokenRequests;
    const late = await sim.deliver(sim.messageXml(openId, { MsgType: 'text', Content: '[[scenario:normal+delay=6500]] pushed one', MsgId: nextMsgId() }), WINDOW_MS);
    expect(late.accepted?.reply?.Content).toMatch(/taking a while/i);
    await eventually(() => wechat.textsTo(openId).length === 1, 8000);
    expect(wechat.textsTo(openId)).toEqual(['Echo: pushed one']);
    // One token, fetched under the lock, stored on the cluster and used for the typing call and the push.
    expect(wechat.tokenRequests - tokensBefore).toBe(1);
    const used = wechat.calls.filter((c) => c.body.touser === openId).map((c) => [c.path, c.query.access_token]);
    expect(used.map(([path]) => path)).toEqual(['/cgi-bin/message/custom/typing', '/cgi-bin/message/custom/send']);
    const cluster = new Cluster([{ host: '127.0.0.1', port: nodes[1]!.port }]);
    try {
      expect(await cluster.get(`${prefix}:token:${APP_ID}`)).toBe(used[1]![1]);
      expect(used[0]![1]).toBe(used[1]![1]);
      expect(await cluster.zcard(`${prefix}:push:completed`)).toBe(1);
      // The token lock was released by its owner, and the push job left its follower's push line.
      expect(await cluster.exists(`${prefix}:token-lock:${APP_ID}`)).toBe(0);
      expect(await cluster.zcard(`${prefix}:push-line:default:${openId}`)).toBe(0);
    } finally {
      cluster.disconnect();
    }
    for (const proc of [ingress, worker]) {
      expect(proc.child.exitCode).toBeNull();
      expect((await proc.flushedLogs()).filter((l) => /CROSSSLOT|MOVED|uncaught|unhandled|job failed/i.test(l))).toEqual([]);
    }
  });

  it('is not ready while every node is down, fails WeChat fast, and recovers when they return', async () => {
    const ingress = await startProcess('ingress', env());
    const worker = await startProcess('worker', env());
    procs.push(ingress, worker);
    await Promise.all([waitForReady(ingress.url, 200), waitForReady(worker.url, 200)]);
    const sim = simulatorFor(ingress);

    await Promise.all(nodes.map((node) => killNode(node)));
    await Promise.all([waitForReady(ingress.url, 503, 5000), waitForReady(worker.url, 503, 5000)]);
    const during = await sim.attempt(sim.messageXml('o_cluster_down', { MsgType: 'text', Content: 'down', MsgId: nextMsgId() }), WINDOW_MS);
    expect(during.status).toBe(503);
    expect(during.ms).toBeLessThan(1000);

    // Same ports and directories: each node reads its nodes-<port>.conf and the cluster re-forms.
    nodes = await Promise.all(nodes.map((node) => startRedisServer({ port: node.port, dir: node.dir, args: clusterArgs.get(node.port) })));
    await Promise.all([waitForReady(ingress.url, 200, 15_000), waitForReady(worker.url, 200, 15_000)]);
    const after = await sim.deliver(sim.messageXml('o_cluster_down', { MsgType: 'text', Content: 'back', MsgId: nextMsgId() }), WINDOW_MS);
    expect(after.accepted?.reply?.Content).toBe('Echo: back');
    expect(ingress.child.exitCode).toBeNull();
    expect(worker.child.exitCode).toBeNull();
  });
});

async function killNode(node: RedisServer): Promise<void> {
  const exited = new Promise((resolve) => node.process.once('exit', resolve));
  node.process.kill('SIGKILL');
  await exited;
}

/** Each node's cluster flags by port, to restart it as it was. */
const clusterArgs = new Map<number, string[]>();

function nodeClient(node: RedisServer): Redis {
  return new Redis(node.port, '127.0.0.1', { maxRetriesPerRequest: 1 });
}

/** Starts `n` cluster-enabled redis-servers, joins them with `redis-cli --cluster create`, and waits for cluster_state:ok. */
async function startCluster(n: number): Promise<RedisServer[]> {
  const nodes: RedisServer[] = [];
  for (let i = 0; i < n; i++) {
    const port = await freePort();
    // The bus port defaults to port + 10000, which may be taken or beyond 65535: pick one.
    const busPort = await freePort();
    clusterArgs.set(port, ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-port', String(busPort)]);
    nodes.push(await startRedisServer({ port, args: clusterArgs.get(port) }));
  }
  const addresses = nodes.map((node) => `127.0.0.1:${node.port}`);
  await run('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes'], { timeout: 20_000 });
  for (const node of nodes) {
    for (let i = 0; ; i++) {
      const { stdout } = await run('redis-cli', ['-p', String(node.port), 'cluster', 'info']);
      if (stdout.includes('cluster_state:ok')) break;
      if (i > 100) throw new Error(`cluster never reached cluster_state:ok on ${node.port}:\n${stdout}`);
      await sleep(100);
    }
  }
  return nodes;
}
