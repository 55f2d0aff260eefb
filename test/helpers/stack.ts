import { inject } from 'vitest';
import { createLogger, loadConfig, type Config, type Logger } from '../../packages/core/src/index.js';
import { WeChatSimulator, type CallbackMode } from '../../packages/core/src/wechat/simulator.js';
import { startIngress, type IngressHandle } from '../../apps/ingress/src/index.js';
import { startWorker, type WorkerHandle } from '../../apps/worker/src/index.js';

export const TOKEN = 'testtoken123';
export const APP_ID = 'wx1234567890abcdef';
export const AES_KEY = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG';

import { uniquePrefix } from './prefix.js';

export { uniquePrefix };

/** Environment for one account pointing at the local fakes; `overrides` wins. */
export function testEnv(opts: { dify: { baseUrl: string; apiKey: string }; wechatUrl?: string; overrides?: Record<string, string> }): Record<string, string> {
  return {
    REDIS_URL: inject('redisUrl'),
    QUEUE_PREFIX: uniquePrefix(),
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    WECHAT_APP_ID: APP_ID,
    WECHAT_TOKEN: TOKEN,
    WECHAT_ENCODING_AES_KEY: AES_KEY,
    WECHAT_APP_SECRET: 'secret-for-tests',
    WECHAT_API_BASE_URL: opts.wechatUrl ?? 'http://127.0.0.1:9',
    DIFY_API_BASE_URL: opts.dify.baseUrl,
    DIFY_API_KEY: opts.dify.apiKey,
    DIFY_APP_TYPE: 'chat',
    ...opts.overrides,
  };
}

export interface Stack {
  config: Config;
  logger: Logger;
  ingress: IngressHandle;
  workers: WorkerHandle[];
  simulator(mode?: CallbackMode, account?: string): WeChatSimulator;
  close(): Promise<void>;
}

/** Starts an ingress and `workers` worker instances in this process, on real Redis and real HTTP. */
export async function startStack(
  env: Record<string, string>,
  opts: { workers?: number; workerPort?: number; logDestination?: NodeJS.WritableStream } = {},
): Promise<Stack> {
  const config = loadConfig(env);
  const logger = createLogger({ level: config.logLevel, ...(opts.logDestination ? { destination: opts.logDestination } : {}) });
  const ingress = await startIngress(config, logger.child({ svc: 'ingress' }), { port: 0, host: '127.0.0.1' });
  await ingress.ready();
  const workers: WorkerHandle[] = [];
  for (let i = 0; i < (opts.workers ?? 1); i++) {
    workers.push(await startWorker(config, logger.child({ svc: `worker${i}` }), { port: opts.workerPort ?? null, host: '127.0.0.1' }));
  }
  return {
    config,
    logger,
    ingress,
    workers,
    simulator: (mode = 'plain', account) =>
      new WeChatSimulator({
        url: `${ingress.url}/wechat${account ? `/${account}` : ''}`,
        token: TOKEN,
        appId: APP_ID,
        encodingAesKey: AES_KEY,
        mode,
      }),
    async close() {
      await ingress.close();
      await Promise.all(workers.map((w) => w.close(1000)));
    },
  };
}
