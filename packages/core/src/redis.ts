import { Cluster, Redis, type RedisOptions } from 'ioredis';

/** A Redis client or a Redis Cluster client; both speak the commands we use. */
export type RedisClient = Redis | Cluster;

/**
 * Opens a client for `url`. `redis+cluster://host:port` (or `?cluster=1`) seeds a Redis Cluster.
 * `blocking` clients (BullMQ workers, QueueEvents) must retry forever: `maxRetriesPerRequest: null`.
 * Producer clients fail fast so that a Redis outage turns into a quick answer, not a hang.
 */
export function createRedis(url: string, opts: { blocking?: boolean; name?: string } = {}): RedisClient {
  const options: RedisOptions = {
    maxRetriesPerRequest: opts.blocking ? null : 1,
    enableOfflineQueue: true,
    connectionName: opts.name,
    retryStrategy: (times) => Math.min(200 * times, 2000),
  };
  const parsed = new URL(url.replace(/^redis\+cluster:/, 'redis:'));
  if (url.startsWith('redis+cluster:') || parsed.searchParams.get('cluster') === '1') {
    return new Cluster([{ host: parsed.hostname, port: Number(parsed.port || 6379) }], {
      redisOptions: { ...options, password: decodeURIComponent(parsed.password) || undefined },
      clusterRetryStrategy: (times) => Math.min(200 * times, 2000),
    });
  }
  return new Redis(url.replace(/\?.*$/, ''), options);
}

/** Builds a key under the service prefix; with a hash tag prefix (`{wxdify}`) all keys share a Cluster slot. */
export function redisKey(prefix: string, ...parts: string[]): string {
  return [prefix, ...parts].join(':');
}

/** Registers a Lua script once per client (ioredis runs it with EVALSHA, falling back to EVAL). */
export function defineScript<Args extends (string | number)[], R>(
  client: RedisClient,
  name: string,
  numberOfKeys: number,
  lua: string,
): (...args: Args) => Promise<R> {
  if (!(name in client)) client.defineCommand(name, { numberOfKeys, lua });
  const fn = (client as unknown as Record<string, (...a: Args) => Promise<R>>)[name]!;
  return (...args: Args) => fn.apply(client, args);
}
