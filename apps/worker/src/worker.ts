import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Queue, Worker } from 'bullmq';
import Koa from 'koa';
import {
  ConversationStore,
  DeliveryStore,
  JOBS,
  QUEUES,
  createDifyClient,
  createMetrics,
  createRedis,
  throttledErrorLog,
  isRedisReady,
  renderMetrics,
  type AccountConfig,
  type AnswerJobData,
  type Config,
  type DifyClient,
  type Logger,
  type Metrics,
  type PushJobData,
} from '@wxdify/core';
import { dispatch, type ProcessorMap } from './processors.js';
import { createAnswerProcessor } from './processors/answer.js';
import { createPushProcessor } from './processors/push.js';
import { startDueSweeper } from './due-sweeper.js';
import { PushLine } from './push-line.js';
import { UserTurns } from './user-turn.js';
import { WeChatApi } from './wechat-api.js';

export interface WorkerHandle {
  server: Server | undefined;
  url: string | undefined;
  /** Stops taking jobs, lets running ones finish within `graceMs`, then closes everything. */
  close(graceMs?: number): Promise<void>;
}

/** Starts the BullMQ workers (answers, pushes) and, unless `port` is null, the health/metrics server. */
export async function startWorker(
  config: Config,
  logger: Logger,
  opts: { port?: number | null; host?: string; metrics?: Metrics } = {},
): Promise<WorkerHandle> {
  if (!config.redisUrl) throw new Error('REDIS_URL is required');
  const redis = createRedis(config.redisUrl, { blocking: true, name: 'worker' });
  const connection = redis as never;
  const prefix = config.queuePrefix;
  const answerQueue = new Queue<AnswerJobData>(QUEUES.answer, { connection, prefix });
  const pushQueue = new Queue<PushJobData>(QUEUES.push, { connection, prefix });
  for (const q of [answerQueue, pushQueue]) q.on('error', throttledErrorLog(logger, `queue ${q.name} error`));
  const store = new DeliveryStore(redis, prefix);
  const metrics = opts.metrics ?? createMetrics('worker', { customServiceBlocked: () => readBlocked(store, config) });
  const difyClients = new Map<string, DifyClient>();
  const apis = new Map<string, WeChatApi>();
  const difyFor = (account: AccountConfig) =>
    memo(difyClients, account.id, () =>
      createDifyClient({
        baseUrl: account.difyApiBaseUrl,
        apiKey: account.difyApiKey,
        appType: account.difyAppType,
        queryVariable: account.difyQueryVariable,
        outputVariable: account.difyOutputVariable,
        idleTimeoutMs: account.difyIdleTimeoutMs,
        totalTimeoutMs: account.difyTotalTimeoutMs,
        logger: logger.child({ account: account.id, component: 'dify' }),
      }),
    );
  const wechatFor = (account: AccountConfig) =>
    memo(apis, account.id, () => new WeChatApi({ account, redis, prefix, metrics, logger: logger.child({ account: account.id, component: 'wechat-api' }) }));

  const pushDeps = { config, logger, metrics, store, wechatFor, pushQueue, pushLine: new PushLine(redis, prefix, pushQueue) };
  const processors: ProcessorMap = {
    [QUEUES.answer]: {
      [JOBS.answer]: createAnswerProcessor({
        config,
        logger,
        store,
        conversations: new ConversationStore(redis, prefix),
        turns: new UserTurns(store, answerQueue),
        pushQueue,
        difyFor,
        wechatFor,
        metrics,
      }),
    },
    [QUEUES.push]: { [JOBS.push]: createPushProcessor(pushDeps) },
  };
  // A killed worker's job is taken over within ~30 s (lock 15 s, stall check every 10 s); a job may
  // stall twice (two crashes) before BullMQ gives up on it.
  const workerOpts = { connection, prefix, lockDuration: 15_000, stalledInterval: 10_000, maxStalledCount: 2 };
  const sweeper = startDueSweeper({ config, store, pushQueue, logger });
  const workers = [
    new Worker(QUEUES.answer, dispatch(processors[QUEUES.answer], QUEUES.answer), { ...workerOpts, concurrency: config.workerConcurrency }),
    new Worker(QUEUES.push, dispatch(processors[QUEUES.push], QUEUES.push), { ...workerOpts, concurrency: 50 }),
  ];
  for (const w of workers) {
    w.on('error', throttledErrorLog(logger, `worker ${w.name} error`));
    w.on('failed', (job, err) => logger.warn({ jobId: job?.id, err: err.message, attempts: job?.attemptsMade }, 'job failed'));
    // A job whose lock could not be renewed is (or soon will be) run again by another worker as a
    // stalled job: abort our run (its processor sees the signal) so the two do not both work on it.
    w.on('lockRenewalFailed', (jobIds) => {
      logger.warn({ jobIds }, 'job lock lost; cancelling our run of those jobs');
      for (const id of jobIds) w.cancelJob(id, 'lock lost');
    });
  }

  let shuttingDown = false;
  const isReady = async () => !shuttingDown && (await isRedisReady(redis));
  const renderAll = () => renderMetrics(metrics, [answerQueue, pushQueue]);
  const server = opts.port === null ? undefined : await listenHealth(opts.port ?? config.port ?? 8081, opts.host ?? config.host, isReady, renderAll, metrics.registry.contentType);
  const url = server ? `http://127.0.0.1:${(server.address() as AddressInfo).port}` : undefined;
  logger.info({ url, concurrency: config.workerConcurrency }, 'worker started');

  return {
    server,
    url,
    async close(graceMs = 30_000) {
      shuttingDown = true;
      const cancel = setTimeout(() => workers.forEach((w) => w.cancelAllJobs('shutdown')), graceMs);
      await sweeper.stop();
      await Promise.all(workers.map((w) => w.close()));
      clearTimeout(cancel);
      await answerQueue.close();
      await pushQueue.close();
      if (server) await new Promise((resolve) => server.close(resolve));
      redis.disconnect();
    },
  };
}

async function listenHealth(
  port: number,
  host: string,
  isReady: () => Promise<boolean>,
  render: () => Promise<string>,
  contentType: string,
): Promise<Server> {
  const app = new Koa();
  app.use(async (ctx) => {
    if (ctx.path === '/metrics') {
      ctx.type = contentType;
      ctx.body = await render();
    } else if (ctx.path === '/healthz') {
      ctx.body = 'ok';
    } else if (ctx.path === '/readyz') {
      const ready = await isReady();
      ctx.status = ready ? 200 : 503;
      ctx.body = ready ? 'ready' : 'not ready';
    }
  });
  const server = createServer(app.callback());
  server.listen(port, host);
  await once(server, 'listening');
  return server;
}

/** Each account's 48001 switch, as every worker reports it in `wxdify_custom_service_blocked`. */
async function readBlocked(store: DeliveryStore, config: Config): Promise<Map<string, boolean>> {
  const ids = [...config.accounts.keys()];
  const blocked = await Promise.all(ids.map((id) => store.customServiceBlocked(id)));
  return new Map(ids.map((id, i) => [id, blocked[i]!]));
}

function memo<V>(map: Map<string, V>, key: string, make: () => V): V {
  let v = map.get(key);
  if (v === undefined) map.set(key, (v = make()));
  return v;
}
