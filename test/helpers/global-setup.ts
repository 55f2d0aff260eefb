import { startRedisServer, type RedisServer } from './redis-server.js';

let redis: RedisServer | undefined;

/** One real redis-server for the whole run, on a free port; tests isolate themselves with a unique prefix. */
export async function setup({ provide }: { provide: (key: string, value: unknown) => void }): Promise<void> {
  redis = await startRedisServer();
  provide('redisUrl', redis.url);
  process.env.TEST_REDIS_URL = redis.url;
}

export async function teardown(): Promise<void> {
  await redis?.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}
