import { redisKey, type RedisClient } from './redis.js';

/** Per-follower arrival order of answer jobs: a sorted set scored by first arrival (ms). */
export class UserOrder {
  readonly #redis: RedisClient;
  readonly #prefix: string;

  constructor(redis: RedisClient, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
  }

  #key(account: string, openId: string): string {
    return redisKey(this.#prefix, 'order', account, openId);
  }

  /** Records a message's place in line; a retry keeps the first arrival's place (ZADD NX). */
  async enqueue(account: string, openId: string, jobId: string, arrivedAt: number): Promise<void> {
    const key = this.#key(account, openId);
    await this.#redis.multi().zadd(key, 'NX', arrivedAt, jobId).expire(key, 86_400).exec();
  }

  /** The job whose turn it is (the oldest not yet released), if any. */
  async head(account: string, openId: string): Promise<string | undefined> {
    const [first] = await this.#redis.zrange(this.#key(account, openId), 0, 0);
    return first;
  }

  /** When `jobId` took its place in line (ms), if it is in line. */
  async arrivedAt(account: string, openId: string, jobId: string): Promise<number | undefined> {
    const score = await this.#redis.zscore(this.#key(account, openId), jobId);
    return score === null ? undefined : Number(score);
  }

  /** Takes a finished job out of line; returns the next one, if any. */
  async release(account: string, openId: string, jobId: string): Promise<string | undefined> {
    const key = this.#key(account, openId);
    await this.#redis.zrem(key, jobId);
    return this.head(account, openId);
  }
}
