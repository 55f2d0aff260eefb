import { Cluster, Redis, type RedisOptions } from 'ioredis';

/** The URL schemes `createRedis` opens: `redis://`, `rediss://` (TLS), and either with `+cluster` (a Redis Cluster). */
export const REDIS_URL_SCHEME = /^rediss?(\+cluster)?:\/\//;

/** A Redis client or a Redis Cluster client; both speak the commands we use. */
export type RedisClient = Redis | Cluster;

/** A producer command that has not answered by then means Redis is gone or stuck: fail the request, WeChat retries. */
const PRODUCER_COMMAND_TIMEOUT_MS = 2000;
/** Reconnect back-off: quick at first, then every 2 s for as long as Redis stays away (never give up). */
const retryStrategy = (times: number) => Math.min(200 * times, 2000);

/**
 * Opens a client for `url`. `redis+cluster://host:port` (or `?cluster=1`) seeds a Redis Cluster;
 * `rediss+cluster://` (or `rediss://…?cluster=1`) does so over TLS, as managed clusters require.
 * `blocking` clients (BullMQ workers, QueueEvents) retry forever: `maxRetriesPerRequest: null`,
 * commands queue while Redis is away and run when it returns.
 * Producer clients fail fast so that a Redis outage turns into a quick answer, not a hang
 * (stack.md §1.10): only the first connection attempt queues commands (so a client can be used
 * right after it is created); from then on a command fails at once while Redis is away, and
 * every command gives up after 2 s.
 */
export function createRedis(url: string, opts: { blocking?: boolean; name?: string } = {}): RedisClient {
  const blocking = opts.blocking ?? false;
  const options: RedisOptions = {
    maxRetriesPerRequest: blocking ? null : 1,
    enableOfflineQueue: true,
    commandTimeout: blocking ? undefined : PRODUCER_COMMAND_TIMEOUT_MS,
    connectionName: opts.name,
    retryStrategy,
  };
  const client = isClusterUrl(url) ? createCluster(url, options) : new Redis(url.replace(/\?.*$/, ''), options);
  // Outages show on /readyz and through BullMQ's `error` events, which the apps log. This listener
  // only stops ioredis from printing "Unhandled error event" for a client nobody else listens to:
  // the one QueueEvents and Workers duplicate, or any client once BullMQ has let go of it on close.
  client.on('error', ignoreError);
  if (!blocking) {
    // ioredis reads the option on every command (a Cluster's node connections keep their own queue).
    const failFast = () => (client.options.enableOfflineQueue = false);
    client.once('ready', failFast);
    client.once('reconnecting', failFast);
  }
  return client;
}

function createCluster(url: string, options: RedisOptions): Cluster {
  const parsed = new URL(url.replace(/^(rediss?)\+cluster:/, '$1:'));
  const tls = parsed.protocol === 'rediss:';
  return new Cluster([{ host: parsed.hostname, port: Number(parsed.port || 6379) }], {
    redisOptions: {
      ...options,
      username: decodeURIComponent(parsed.username) || undefined,
      password: decodeURIComponent(parsed.password) || undefined,
      // The nodes' certificates name the configuration endpoint, not the IPs the cluster announces.
      ...(tls ? { tls: { servername: parsed.hostname } } : {}),
    },
    // Managed clusters announce node addresses that must be used as given (ioredis docs, "Special note: AWS ElastiCache").
    ...(tls ? { dnsLookup: (address: string, callback: (err: null, address: string) => void) => callback(null, address) } : {}),
    clusterRetryStrategy: retryStrategy,
  });
}

function ignoreError(): void {}

/** True for the URLs `createRedis` opens as a Redis Cluster: `redis+cluster://…`, `rediss+cluster://…` or `…?cluster=1`. */
export function isClusterUrl(url: string): boolean {
  if (/^rediss?\+cluster:/.test(url)) return true;
  try {
    return new URL(url).searchParams.get('cluster') === '1';
  } catch {
    return false;
  }
}

/**
 * True when `prefix` carries a Redis Cluster hash tag: Redis hashes only the part between the
 * first `{` and the next `}` when it is not empty, so every key under the prefix shares one slot
 * (BullMQ's and ours run multi-key Lua). https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags
 */
export function hasHashTag(prefix: string): boolean {
  const open = prefix.indexOf('{');
  if (open < 0) return false;
  const close = prefix.indexOf('}', open + 1);
  return close > open + 1;
}

/** Readiness: the client is connected and answers PING within `timeoutMs` (a stuck Redis is not ready either). */
export async function isRedisReady(client: RedisClient, timeoutMs = 500): Promise<boolean> {
  if (client.status !== 'ready') return false;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(resolve, timeoutMs, false)));
  try {
    return await Promise.race([client.ping().then(() => true, () => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Builds a key under the service prefix; with a hash tag prefix (`{wxdify}`) all keys share a Cluster slot. */
export function redisKey(prefix: string, ...parts: string[]): string {
  return [prefix, ...parts].join(':');
}

/**
 * Registers a Lua script once per client (ioredis runs it with EVALSHA, falling back to EVAL).
 * `numberOfKeys` null: the script takes any number of keys, given as its first argument.
 */
export function defineScript<Args extends (string | number)[], R>(
  client: RedisClient,
  name: string,
  numberOfKeys: number | null,
  lua: string,
): (...args: Args) => Promise<R> {
  if (!(name in client)) client.defineCommand(name, numberOfKeys === null ? { lua } : { numberOfKeys, lua });
  const fn = (client as unknown as Record<string, (...a: Args) => Promise<R>>)[name]!;
  return (...args: Args) => fn.apply(client, args);
}
