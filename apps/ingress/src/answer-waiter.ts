import { throttledErrorLog, type DeliveryStore, type Logger, type RedisClient, type SettleResult } from '@wxdify/core';

/** Re-checks Redis this often while waiting, in case a wake-up was missed (pub/sub is at-most-once). */
const SAFETY_POLL_MS = 1000;

export interface TakeOptions {
  signal?: AbortSignal | undefined;
  /** `take`: a WeChat attempt (done once the state leaves "open"); `fetch`: the follower's `1` (done once it left "wait"). */
  mode?: 'take' | 'fetch';
  /** Runs once this wait is registered, before anything is checked (e.g. adding the job), so no wake-up can be missed. */
  onRegistered?: () => Promise<void>;
  /** The job was just created: nothing can be stored yet, so skip the first check. */
  fresh?: boolean;
}

/**
 * Waits for answers across every request of this process with one subscriber connection: the
 * worker publishes a job id the moment it stores its answer (FINISH_LUA), and a map of job id →
 * wake-up callbacks turns that into an immediate settle. Each wait settles through Redis, so an
 * answer stored before the wait began is seen at once, and one stored between the check and the
 * sleep still wakes it.
 */
export class AnswerWaiter {
  readonly #subscriber: RedisClient;
  readonly #store: DeliveryStore;
  readonly #wakers = new Map<string, Set<() => void>>();
  readonly #subscribed: Promise<unknown>;

  constructor(opts: { subscriber: RedisClient; store: DeliveryStore; logger: Logger }) {
    this.#store = opts.store;
    this.#subscriber = opts.subscriber;
    this.#subscriber.on('message', (_channel: string, jobId: string) => {
      for (const wake of this.#wakers.get(jobId) ?? []) wake();
    });
    // ioredis subscribes again by itself after a reconnect; the safety poll covers the gap.
    this.#subscribed = this.#subscriber.subscribe(opts.store.answersChannel).catch(throttledErrorLog(opts.logger, 'subscribe failed'));
  }

  /** Resolves once the subscription is in place. */
  async ready(): Promise<void> {
    await this.#subscribed;
  }

  /**
   * Takes the answer of `jobId` as soon as it exists, or returns the last state seen at `deadline`
   * (ms since epoch). Never waits past the deadline; `signal` ends the wait early.
   */
  async take(jobId: string, deadline: number, opts: TakeOptions = {}): Promise<SettleResult> {
    const mode = opts.mode ?? 'take';
    let woken = false;
    let wakeUp: (() => void) | undefined;
    const waker = () => {
      woken = true;
      wakeUp?.();
    };
    const set = this.#wakers.get(jobId) ?? new Set();
    set.add(waker);
    this.#wakers.set(jobId, set);
    try {
      await opts.onRegistered?.();
      let result: SettleResult = { state: '', answer: undefined, won: false };
      for (let check = !opts.fresh; ; check = true) {
        if (check) {
          woken = false;
          result = await this.#store.settle(jobId, mode);
          if (result.state !== '' && (mode === 'take' || result.state !== 'wait')) return result;
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0 || opts.signal?.aborted) return result;
        if (woken) continue;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.min(remaining, SAFETY_POLL_MS));
          function done() {
            clearTimeout(timer);
            opts.signal?.removeEventListener('abort', done);
            wakeUp = undefined;
            resolve();
          }
          wakeUp = done;
          opts.signal?.addEventListener('abort', done, { once: true });
        });
      }
    } finally {
      set.delete(waker);
      if (set.size === 0) this.#wakers.delete(jobId);
    }
  }

  async close(): Promise<void> {
    await this.#subscriber.quit().catch(() => this.#subscriber.disconnect());
  }
}
