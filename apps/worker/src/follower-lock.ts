import { DelayedError, type Job } from 'bullmq';
import { defineScript, redisKey, type RedisClient } from '@wxdify/core';

const RELEASE_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/**
 * A per-follower mutex for pushes, so the parts of two answers never interleave: a push job that
 * finds the lock taken goes back to `delayed` for a moment (BullMQ's DelayedError).
 */
export class FollowerLock {
  readonly #redis: RedisClient;
  readonly #prefix: string;
  readonly #release;

  constructor(redis: RedisClient, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#release = defineScript<[string, string], number>(redis, 'wxdReleaseLock', 1, RELEASE_LUA);
  }

  /** Runs `fn` holding the follower's push lock, or parks `job` and throws DelayedError. */
  async run<T>(job: Job, token: string | undefined, account: string, openId: string, fn: () => Promise<T>): Promise<T> {
    const key = redisKey(this.#prefix, 'push-lock', account, openId);
    const owner = `${job.id}:${token ?? ''}`;
    if ((await this.#redis.set(key, owner, 'PX', 60_000, 'NX')) !== 'OK') {
      await job.moveToDelayed(Date.now() + 250, token);
      throw new DelayedError();
    }
    try {
      return await fn();
    } finally {
      await this.#release(key, owner);
    }
  }
}
