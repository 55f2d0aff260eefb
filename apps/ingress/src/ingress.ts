import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Queue } from 'bullmq';
import {
  ConversationStore,
  DeliveryStore,
  QUEUES,
  createMetrics,
  createRedis,
  throttledErrorLog,
  isRedisReady,
  type AnswerJobData,
  type Metrics,
  type PushJobData,
  type Config,
  type Logger,
} from '@wxdify/core';
import { AnswerWaiter } from './answer-waiter.js';
import { createIngressApp } from './app.js';

export interface IngressHandle {
  server: Server;
  url: string;
  /** Resolves once the answers subscription is in place. */
  ready(): Promise<void>;
  /**
   * Turns /readyz to 503, keeps serving for `drainDelayMs` (load balancers notice), stops
   * accepting, answers the requests it holds (each ends within WeChat's 5 s), then closes Redis.
   */
  close(opts?: { drainDelayMs?: number }): Promise<void>;
}

/** Starts the ingress: Redis clients, the answer queue, one shared waiter, the HTTP server. */
export async function startIngress(
  config: Config,
  logger: Logger,
  opts: { port?: number; host?: string; metrics?: Metrics } = {},
): Promise<IngressHandle> {
  if (!config.redisUrl) throw new Error('REDIS_URL is required');
  const redis = createRedis(config.redisUrl, { name: 'ingress' });
  // Subscribed to the answers channel: a connection of its own, retrying forever.
  const subscriber = createRedis(config.redisUrl, { blocking: true, name: 'ingress-answers' });
  const queue = new Queue<AnswerJobData>(QUEUES.answer, { connection: redis as never, prefix: config.queuePrefix });
  const pushQueue = new Queue<PushJobData>(QUEUES.push, { connection: redis as never, prefix: config.queuePrefix });
  for (const q of [queue, pushQueue]) q.on('error', throttledErrorLog(logger, `queue ${q.name} error`));
  const store = new DeliveryStore(redis, config.queuePrefix);
  // Not awaited: with Redis down the process still starts, /healthz answers and /readyz says 503.
  const waiter = new AnswerWaiter({ subscriber, store, logger });

  let shuttingDown = false;
  const isReady = async () => !shuttingDown && (await isRedisReady(redis));
  const app = await createIngressApp({
    config,
    logger,
    metrics: opts.metrics ?? createMetrics('ingress'),
    queue,
    pushQueue,
    store,
    waiter,
    conversations: new ConversationStore(redis, config.queuePrefix),
    isReady,
  });
  const server = createServer({ requestTimeout: 15_000, headersTimeout: 10_000, keepAliveTimeout: 65_000 }, app.callback());
  server.listen(opts.port ?? config.port ?? 8080, opts.host ?? config.host);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  logger.info({ port }, 'ingress listening');

  return {
    server,
    url,
    ready: () => waiter.ready(),
    async close({ drainDelayMs = 0 } = {}) {
      shuttingDown = true;
      if (drainDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, drainDelayMs));
      const closed = new Promise((resolve) => server.close(resolve));
      // Keep-alive connections go as soon as their request is answered; requests in flight end
      // within WeChat's 5 s, and whatever is left after that is cut.
      const idle = setInterval(() => server.closeIdleConnections(), 50);
      const cut = setTimeout(() => server.closeAllConnections(), config.wechatTimeoutMs + 1000);
      await closed;
      clearInterval(idle);
      clearTimeout(cut);
      await waiter.close();
      await queue.close();
      await pushQueue.close();
      redis.disconnect();
      subscriber.disconnect();
    },
  };
}
