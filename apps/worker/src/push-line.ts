import { DelayedError, UnrecoverableError, type Job, type Queue } from 'bullmq';
import { defineScript, hasAttemptLeft, parkJob, promoteIfDelayed, redisKey, type PushJobData, type RedisClient } from '@wxdify/core';

/**
 * A parked push job looks again after this long, unless the job ahead of it promotes it sooner
 * when it leaves the line (the usual case). The wait covers only the rest: a head that died and
 * is dropped as stale, or a job that was still on its way to `delayed` when the head left.
 */
const PARK_MS = 2000;
/** The pushing job checks in this often; a job that has not checked in for STALE_MS lost its place. */
const CHECK_IN_MS = 5000;
/**
 * Longer than a push job's longest back-off (8 s) and than a killed worker's job being taken over
 * (up to 25 s, plus up to 5 s since its last check-in), so neither lets a later answer jump ahead;
 * short enough that a job gone for good (failed by BullMQ's stall limit) holds nobody up long.
 */
const STALE_MS = 45_000;
const LINE_TTL_S = 86_400;

// KEYS: the follower's push line (score: answer order), its check-in times.
// ARGV: push job id, its place (score), now, STALE_MS, key TTL (s).
// Takes a place in line (kept on later calls), checks in, drops jobs that stopped checking in
// (crashed and failed for good), and answers 1 when the caller heads the line.
const TURN_LUA = `
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[3]) - tonumber(ARGV[4])))
for _, id in ipairs(gone) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return redis.call('ZRANGE', KEYS[1], 0, 0)[1] == ARGV[1] and 1 or 0
`;

/** Where a push job stands in its follower's line. */
export interface PushTurn {
  account: string;
  openId: string;
  /** Smaller goes first: the answer's first arrival (ms) × 1000 + the part it starts at. */
  order: number;
}

/**
 * The per-follower push line (DESIGN 6: pushes in order per follower). Push jobs line up in
 * answer order in a Redis sorted set and only the head pushes; the others go back to `delayed`
 * until the job ahead of them leaves and promotes the next (BullMQ's DelayedError and promote).
 * The place belongs to the push job (its id), not to a process: a job that fails and backs off,
 * is handed back at shutdown, or is re-run after its worker was killed keeps its place and takes
 * its turn again at once.
 */
export class PushLine {
  readonly #redis: RedisClient;
  readonly #prefix: string;
  readonly #queue: Queue<PushJobData>;
  readonly #turn;

  constructor(redis: RedisClient, prefix: string, queue: Queue<PushJobData>) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#queue = queue;
    this.#turn = defineScript<[string, string, string, number, number, number, number], number>(redis, 'wxdPushTurn', 2, TURN_LUA);
  }

  /**
   * Runs `fn` when `job` heads its follower's push line, or parks `job` and throws DelayedError.
   * `fn` gets `isHead()`: false once the job lost its place (it stopped checking in for too long),
   * and should then stop between parts. The job leaves the line when `fn` returns or fails for good.
   */
  async run<T>(job: Job, token: string | undefined, turn: PushTurn, fn: (isHead: () => boolean) => Promise<T>): Promise<T> {
    const keys = [this.#key('push-line', turn), this.#key('push-seen', turn)] as const;
    const checkIn = async () => (await this.#turn(...keys, job.id!, turn.order, Date.now(), STALE_MS, LINE_TTL_S)) === 1;
    if (!(await checkIn())) {
      await parkJob(job, token, PARK_MS);
    }
    let head = true;
    const timer = setInterval(() => void checkIn().then((h) => (head = h), () => undefined), CHECK_IN_MS);
    try {
      const result = await fn(() => head);
      await this.#leave(keys, job.id!);
      return result;
    } catch (err) {
      // A job that will run again keeps its place, so no later answer is pushed before its rest.
      if (!(err instanceof DelayedError) && !willRetry(job, err)) await this.#leave(keys, job.id!);
      throw err;
    } finally {
      clearInterval(timer);
    }
  }

  /** Leaves the line and wakes the job that now heads it. */
  async #leave(keys: readonly [string, string], jobId: string): Promise<void> {
    // Sent at once, one round trip: Redis runs one connection's commands in order, so the ZRANGE sees the new head.
    const [, , [next]] = await Promise.all([
      this.#redis.zrem(keys[0], jobId),
      this.#redis.zrem(keys[1], jobId),
      this.#redis.zrange(keys[0], 0, 0),
    ]);
    // Best effort: a wake-up that fails leaves the next job to its own look-again (PARK_MS).
    if (next !== undefined) await promoteIfDelayed(this.#queue, next).catch(() => undefined);
  }

  #key(kind: string, turn: PushTurn): string {
    return redisKey(this.#prefix, kind, turn.account, turn.openId);
  }
}

/** True when BullMQ will run the job again after this error (attempts left, not unrecoverable). */
function willRetry(job: Job, err: unknown): boolean {
  return !(err instanceof UnrecoverableError) && hasAttemptLeft(job);
}
