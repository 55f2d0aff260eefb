import { conversationKey, type ConversationRef } from './conversation-store.js';
import { defineScript, redisKey, type RedisClient } from './redis.js';
import type { AnswerPart, StoredAnswer } from './queue.js';
import {
  ATTEMPT_LUA,
  CLAIM_PART_LUA,
  FINISH_LUA,
  GIVE_BACK_PART_LUA,
  GIVE_BACK_PUSH_LUA,
  PROGRESS_LUA,
  SETTLE_LUA,
  USE_PUSH_LUA,
} from './delivery-scripts.js';

/**
 * Delivery state of one message, one Redis hash per answer job (`<prefix>:msg:<jobId>`):
 *   first  – ms when the first attempt arrived      att   – attempts seen so far
 *   ord    – place in the follower's line (Redis's clock at the first arrival)
 *   ans    – the answer (JSON) once the worker has it
 *   state  – ''      open: WeChat attempts may still take the answer passively
 *            passive the answer went out in a passive reply (a retry may repeat it)
 *            push    handed to customer-service pushes
 *            wait    the follower fetches it by sending `1`
 *            fetched the follower's `1` took it
 *   grant  – until when (ms) the attempt that waits now takes the answer the moment it is stored
 *   next   – index of the first part not handed out yet (claimed by a push or a `1`)
 *   cont   – how many `1`s waited on it
 * Every transition happens inside one Lua script, so the ingress giving up at the last
 * attempt's deadline and the worker finishing cannot both deliver, nor both skip (DESIGN 2).
 */
export type DeliveryState = '' | 'passive' | 'push' | 'wait' | 'fetched';

/** How a caller wants to settle: see SETTLE_LUA. */
export type SettleMode = 'take' | 'last' | 'handoff' | 'fetch' | 'reclaim';

export interface SettleOptions {
  /** Whose pending set a hand-over to `wait` enters (required for that hand-over). */
  follower?: { account: string; openId: string };
  /** Ms since epoch (Redis's clock) after which no passive take is granted: see SETTLE_LUA. */
  notAfter?: number;
}

export interface SettleResult {
  state: DeliveryState;
  /** Present when the caller won the answer (state passive/fetched) or it is known. */
  answer: StoredAnswer | undefined;
  /** True when this call made the transition (the caller is the one who delivers). */
  won: boolean;
}

/** WeChat allows 5 customer-service messages per follower message (errcode 45047 past that). */
export const PUSHES_PER_MESSAGE = 5;

/** Keeps delivery state for 48 h: WeChat's customer-service window, and how long a `1` can fetch. */
export const DELIVERY_TTL_S = 48 * 3600;

/** The customer-service messages a trigger allows, and for how long (s). */
export interface PushAllowance {
  count: number;
  ttlS: number;
}

/** Events that open a small allowance of their own (a menu click is not "a message" to WeChat). */
const EVENT_ALLOWANCE_EVENTS = new Set(['CLICK', 'scancode_push', 'scancode_waitmsg', 'subscribe', 'SCAN']);
const EVENT_ALLOWANCE: PushAllowance = { count: 3, ttlS: 60 };
const MESSAGE_ALLOWANCE: PushAllowance = { count: PUSHES_PER_MESSAGE, ttlS: DELIVERY_TTL_S };

/**
 * What a follower's message or event allows in customer-service messages (WeChat's table,
 * research/wechat.md §4.3): a message 5 within 48 h; a menu click, a follow or a QR scan 3 within
 * 1 min; other events (VIEW, LOCATION, unsubscribe…) none, so they leave the allowance as it is.
 */
export function pushAllowanceFor(message: { kind: string; event?: string }): PushAllowance | undefined {
  if (message.kind !== 'event') return MESSAGE_ALLOWANCE;
  return message.event !== undefined && EVENT_ALLOWANCE_EVENTS.has(message.event) ? EVENT_ALLOWANCE : undefined;
}

/**
 * The largest answer (JSON bytes) that travels in the notice granting it to a waiting attempt:
 * every ingress replica receives every notice. A larger one is read by the attempt it was granted to.
 */
const NOTICE_ANSWER_MAX_BYTES = 16_384;

/** The job id of a message of the answers channel, without reading the answer it may carry. */
export function noticeJobId(notice: string): string {
  const cut = notice.indexOf('\n');
  return cut < 0 ? notice : notice.slice(0, cut);
}

/**
 * Reads a message of the answers channel: the job id, and the answer when the worker granted it
 * to a waiting attempt (FINISH_LUA). A bare job id (also what earlier versions publish) only wakes.
 */
export function parseAnswerNotice(notice: string): { jobId: string; granted: StoredAnswer | undefined } {
  const jobId = noticeJobId(notice);
  if (jobId.length === notice.length) return { jobId, granted: undefined };
  try {
    return { jobId, granted: JSON.parse(notice.slice(jobId.length + 1)) as StoredAnswer };
  } catch {
    return { jobId, granted: undefined }; // still a wake-up: the attempt reads the answer from Redis
  }
}

/** Jobs per PROGRESS_LUA call: a few hundred keys keep Redis busy well under a millisecond. */
const PROGRESS_BATCH = 500;

/** A push hand-over keeps its due entry this long: if its push job was not enqueued by then, a sweep does it. */
const PUSH_HANDOVER_GRACE_MS = 10_000;

/** The Redis side of exactly-once delivery, shared by the ingress and the worker. */
export class DeliveryStore {
  readonly #redis: RedisClient;
  readonly #prefix: string;
  readonly #attempt;
  readonly #settle;
  readonly #finish;
  readonly #claimPart;
  readonly #giveBackPart;
  readonly #giveBackPush;
  readonly #usePush;
  readonly #progress;

  constructor(redis: RedisClient, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#attempt = defineScript<[string, string, string, string, number, number, string, number | '', string, number, ...number[]], [number, string, string, number, string, string, number]>(
      redis, 'wxdAttempt', 4, ATTEMPT_LUA);
    this.#settle = defineScript<[string, string, string, string, string, string, string, number, number], [string, string, number]>(
      redis, 'wxdSettle', 3, SETTLE_LUA);
    this.#finish = defineScript<[string, string, string, string, number, string, string, string, number, number, string, number], [string, string]>(
      redis, 'wxdFinish', 3, FINISH_LUA);
    this.#claimPart = defineScript<[string], [number, string, number]>(redis, 'wxdClaimPart', 1, CLAIM_PART_LUA);
    this.#giveBackPart = defineScript<[string, number], number>(redis, 'wxdGiveBackPart', 1, GIVE_BACK_PART_LUA);
    this.#giveBackPush = defineScript<[string, number], number>(redis, 'wxdGiveBackPush', 1, GIVE_BACK_PUSH_LUA);
    this.#usePush = defineScript<[string], number>(redis, 'wxdUsePush', 1, USE_PUSH_LUA);
    this.#progress = defineScript<(string | number)[], [string, number][]>(redis, 'wxdProgress', null, PROGRESS_LUA);
  }

  /** The hash key of a message's delivery state. */
  key(jobId: string): string {
    return redisKey(this.#prefix, 'msg', jobId);
  }

  /** The sorted set of answers waiting for WeChat's last attempt to be over (score: when it is). */
  get dueKey(): string {
    return redisKey(this.#prefix, 'due');
  }

  /**
   * The channel on which a stored answer's job id is published, waking the attempts waiting for
   * it (see {@link parseAnswerNotice}).
   */
  get answersChannel(): string {
    return redisKey(this.#prefix, 'answers');
  }

  /** A follower's line of answer jobs (sorted by first arrival): one conversation, in order. */
  orderKey(account: string, openId: string): string {
    return redisKey(this.#prefix, 'order', account, openId);
  }

  /**
   * Counts a WeChat attempt (the first one opens the trigger's push `allowance`); returns its number
   * (1-based), when the first one arrived, the state, and whether the answer is stored already
   * (its job is over: never add it again). A message for Dify (`queued`) takes its
   * place in the follower's line at its first arrival; `headOfLine` is the follower's conversation
   * when the message heads that line (its turn has come, and stays until its answer is stored).
   * `grantUntil[n - 1]`: until when (ms epoch) attempt n waits for the answer, so that the worker
   * storing it by then grants it to that attempt at once (see FINISH_LUA); none for the last attempt.
   */
  async recordAttempt(
    jobId: string,
    follower: { account: string; openId: string; queued: boolean; allowance: PushAllowance | undefined },
    now = Date.now(),
    grantUntil: number[] = [],
  ): Promise<{ attempt: number; firstAt: number; state: DeliveryState; answered: boolean; headOfLine?: ConversationRef }> {
    const [attempt, first, state, head, conversationId, generation, answered] = await this.#attempt(
      this.key(jobId),
      this.orderKey(follower.account, follower.openId),
      this.#followerKey('quota', follower.account, follower.openId),
      conversationKey(this.#prefix, follower.account, follower.openId),
      now,
      DELIVERY_TTL_S,
      jobId,
      follower.allowance?.count ?? '',
      follower.queued ? '1' : '0',
      follower.allowance?.ttlS ?? 0,
      ...grantUntil,
    );
    const result = { attempt: Number(attempt), firstAt: Number(first), state: state as DeliveryState, answered: answered === 1 };
    return head === 1 ? { ...result, headOfLine: { id: conversationId || undefined, generation } } : result;
  }

  /** One atomic step of the state machine above. */
  async settle(jobId: string, mode: SettleMode, handoffTo: 'push' | 'wait' | '' = '', opts: SettleOptions = {}): Promise<SettleResult> {
    const { follower, notAfter } = opts;
    if (handoffTo === 'wait' && !follower) throw new Error('a hand-over to wait needs the follower');
    // Without a follower nothing enters a pending set; the key only has to share the prefix (one Cluster slot).
    const pending = follower ? this.pendingKey(follower.account, follower.openId) : this.#followerKey('pend');
    const [state, ans, won] = await this.#settle(
      this.key(jobId),
      this.dueKey,
      pending,
      mode,
      handoffTo,
      jobId,
      notAfter === undefined ? '' : String(notAfter),
      DELIVERY_TTL_S,
      PUSH_HANDOVER_GRACE_MS,
    );
    return { state: state as DeliveryState, answer: ans ? (JSON.parse(ans) as StoredAnswer) : undefined, won: won === 1 };
  }

  /**
   * Stores the worker's answer (never replacing one already stored) and ends the job's turn in
   * its follower's line. Returns the state it found (`push`: the worker pushes it now) and the next job in the follower's line.
   * `dueAfterMs` (after the first arrival) is when WeChat's last attempt must be over.
   */
  async saveAnswer(
    jobId: string,
    answer: StoredAnswer,
    follower: { account: string; openId: string; dueAfterMs: number },
  ): Promise<{ state: DeliveryState; next: string | undefined }> {
    const [state, next] = await this.#finish(
      this.key(jobId),
      this.orderKey(follower.account, follower.openId),
      this.dueKey,
      JSON.stringify(answer),
      DELIVERY_TTL_S,
      jobId,
      follower.account,
      follower.openId,
      follower.dueAfterMs,
      Date.now(),
      this.answersChannel,
      NOTICE_ANSWER_MAX_BYTES,
    );
    return { state: state as DeliveryState, next: next || undefined };
  }

  /** The job whose turn it is in the follower's line (the oldest not finished), if any. */
  async lineHead(account: string, openId: string): Promise<string | undefined> {
    const [first] = await this.#redis.zrange(this.orderKey(account, openId), 0, 0);
    return first;
  }

  /** When `jobId` took its place in the follower's line (ms), if it is in line. */
  async arrivedAt(account: string, openId: string, jobId: string): Promise<number | undefined> {
    const score = await this.#redis.zscore(this.orderKey(account, openId), jobId);
    return score === null ? undefined : Number(score);
  }

  /** Takes a job out of the follower's line (one that ended without an answer). */
  async leaveLine(account: string, openId: string, jobId: string): Promise<void> {
    await this.#redis.zrem(this.orderKey(account, openId), jobId);
  }

  /** Answers whose hand-over is due (WeChat's last attempt must be over), with their follower. */
  async dueAnswers(now = Date.now(), limit = 100): Promise<{ jobId: string; account: string; openId: string }[]> {
    const ids = await this.#redis.zrangebyscore(this.dueKey, '-inf', now, 'LIMIT', 0, limit);
    return Promise.all(
      ids.map(async (jobId) => {
        const [account, openId] = await this.#redis.hmget(this.key(jobId), 'acct', 'uid');
        return { jobId, account: account ?? '', openId: openId ?? '' };
      }),
    );
  }

  /** Drops a due entry whose message state is gone (expired). */
  async dropDue(jobId: string): Promise<void> {
    await this.#redis.zrem(this.dueKey, jobId);
  }

  /**
   * The state of each job and whether its answer is stored, without reading the answers: one
   * round trip per {@link PROGRESS_BATCH} jobs, however many there are.
   */
  async progress(jobIds: string[]): Promise<Map<string, { state: DeliveryState; answered: boolean }>> {
    const out = new Map<string, { state: DeliveryState; answered: boolean }>();
    for (let i = 0; i < jobIds.length; i += PROGRESS_BATCH) {
      const batch = jobIds.slice(i, i + PROGRESS_BATCH);
      const rows = await this.#progress(batch.length, ...batch.map((id) => this.key(id)));
      batch.forEach((id, j) => out.set(id, { state: (rows[j]?.[0] ?? '') as DeliveryState, answered: rows[j]?.[1] === 1 }));
    }
    return out;
  }

  /** Reads the answer and the index of the first undelivered part, without changing anything. */
  async peek(jobId: string): Promise<{ state: DeliveryState; answer: StoredAnswer | undefined; next: number; firstAt: number }> {
    const [state, ans, next, first] = await this.#redis.hmget(this.key(jobId), 'state', 'ans', 'next', 'first');
    return {
      state: (state ?? '') as DeliveryState,
      answer: ans ? (JSON.parse(ans) as StoredAnswer) : undefined,
      next: Number(next ?? 0),
      firstAt: Number(first ?? 0),
    };
  }

  /**
   * Claims the next undelivered part for sending (push job or `1`): its index, the part, and how
   * many remain after it; undefined when none is left. At most once: a claimed part counts as
   * delivered unless the claimer gives it back with {@link giveBackPart}.
   */
  async claimPart(jobId: string): Promise<{ index: number; part: AnswerPart; remaining: number } | undefined> {
    const [index, part, remaining] = await this.#claimPart(this.key(jobId));
    if (index < 0) return undefined;
    return { index, part: JSON.parse(part) as AnswerPart, remaining };
  }

  /** Gives back a claimed part WeChat did not receive; false when a later part was claimed meanwhile. */
  async giveBackPart(jobId: string, index: number): Promise<boolean> {
    return (await this.#giveBackPart(this.key(jobId), index)) === 1;
  }

  /** Counts one `1` that waited on this answer; returns how many so far. */
  async countContinue(jobId: string): Promise<number> {
    return this.#redis.hincrby(this.key(jobId), 'cont', 1);
  }

  #followerKey(kind: string, ...follower: string[]): string {
    return redisKey(this.#prefix, kind, ...follower);
  }

  /**
   * A follower's pending answers (sorted set, by place in line): answers handed over for `1`, and
   * answers with parts still to deliver. A `1` serves the oldest; each stays until fully delivered
   * (or its state expired, 48 h), so a burst of late answers all stay reachable.
   */
  pendingKey(account: string, openId: string): string {
    return this.#followerKey('pend', account, openId);
  }

  /** Adds an answer to the follower's pending set, at its place in line (a no-op when it is there). */
  async setPending(account: string, openId: string, jobId: string): Promise<void> {
    const [ord, first] = await this.#redis.hmget(this.key(jobId), 'ord', 'first');
    const key = this.pendingKey(account, openId);
    // Both sent at once: one round trip.
    await Promise.all([this.#redis.zadd(key, 'NX', ord ?? first ?? Date.now(), jobId), this.#redis.expire(key, DELIVERY_TTL_S)]);
  }

  /**
   * The answer a `1` from this follower fetches: the oldest pending one not fully delivered.
   * Entries found fully delivered or expired on the way are dropped (dropping is idempotent).
   */
  async getPending(account: string, openId: string): Promise<string | undefined> {
    const key = this.pendingKey(account, openId);
    for (const jobId of await this.#redis.zrange(key, 0, 49)) {
      const { state, answer, next } = await this.peek(jobId);
      const gone = state === '' && answer === undefined;
      const delivered = state !== '' && state !== 'wait' && answer !== undefined && next >= answer.parts.length;
      if (!gone && !delivered) return jobId;
      await this.#redis.zrem(key, jobId);
    }
    return undefined;
  }

  /** Drops an answer from the follower's pending set once everything of it went out. */
  async clearPending(account: string, openId: string, jobId: string): Promise<void> {
    await this.#redis.zrem(this.pendingKey(account, openId), jobId);
  }

  /** Uses one push of the allowance; false when none is left (WeChat would answer 45047) or it expired. */
  async usePushQuota(account: string, openId: string): Promise<{ ok: boolean; left: number }> {
    const left = await this.#usePush(this.#followerKey('quota', account, openId));
    return { ok: left >= 0, left: Math.max(0, left) };
  }

  /** Gives back one push of the allowance (the push failed); never above WeChat's 5. */
  async giveBackPush(account: string, openId: string): Promise<void> {
    await this.#giveBackPush(this.#followerKey('quota', account, openId), PUSHES_PER_MESSAGE);
  }

  /** Marks the allowance spent (`0`) when WeChat says 45047. */
  async setPushQuota(account: string, openId: string, left: number): Promise<void> {
    // XX: an allowance that expired stays gone rather than coming back without a TTL.
    await this.#redis.set(this.#followerKey('quota', account, openId), left, 'KEEPTTL', 'XX');
  }

  /** Remembers that WeChat refused customer-service messages for this account (48001): use waiting mode. */
  async blockCustomService(account: string): Promise<boolean> {
    return (await this.#redis.set(redisKey(this.#prefix, 'no-cs', account), Date.now(), 'EX', 86_400, 'NX')) === 'OK';
  }

  /** True while the account is known to lack the customer-service permission. */
  async customServiceBlocked(account: string): Promise<boolean> {
    return (await this.#redis.exists(redisKey(this.#prefix, 'no-cs', account))) === 1;
  }
}
