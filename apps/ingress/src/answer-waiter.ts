import { noticeJobId, parseAnswerNotice, throttledErrorLog, type DeliveryState, type DeliveryStore, type Logger, type RedisClient, type SettleResult } from '@wxdify/core';
import { WaitClock, type ClockEntry } from './wait-clock.js';

/** Re-checks Redis this often while something waits, in case a wake-up was missed (pub/sub is at-most-once). */
const SAFETY_POLL_MS = 1000;

export interface TakeOptions {
  /** WeChat dropped the request: the wait ends at once and nothing more is settled (nobody would receive it). */
  signal?: AbortSignal | undefined;
  /** `take`: a WeChat attempt (done once the state leaves "open"); `fetch`: the follower's `1` (done once it left "wait"). */
  mode?: 'take' | 'fetch';
  /** Runs once this wait is registered, before anything is checked (e.g. adding the job), so no wake-up can be missed. */
  onRegistered?: () => Promise<void>;
  /** The job was just created: nothing can be stored yet, so skip the first check. */
  fresh?: boolean;
}

/** One request's wait, as the clock and the safety poll see it. */
interface Wait extends ClockEntry {
  mode: 'take' | 'fetch';
  /** The answer the worker granted to the attempt waiting now, as its wake-up carried it. */
  granted?: SettleResult;
}

/** True when a wait in `mode` is over once its job is in `state`: an attempt once it left open, a `1` once it also left wait. */
function isOver(mode: Wait['mode'], state: DeliveryState): boolean {
  return state !== '' && (mode === 'take' || state !== 'wait');
}

/**
 * Waits for answers across every request of this process with one subscriber connection and one
 * timer (WaitClock): the worker publishes a job id the moment it stores its answer (FINISH_LUA),
 * and a map of job id → waits turns that into an immediate settle. When an attempt was waiting,
 * that script granted it the answer already and the notice carries it: the attempt replies
 * without a round trip. Each wait settles through Redis, so an answer stored before the wait
 * began is seen at once, and one stored between the check and the sleep still wakes it. The
 * safety poll looks at every waited job in one round trip and wakes only the waits it finds
 * something for: a few hundred requests waiting together used to settle one by one every second,
 * a burst of Redis calls that could land on a burst of answers.
 */
export class AnswerWaiter {
  readonly #subscriber: RedisClient;
  readonly #store: DeliveryStore;
  readonly #waits = new Map<string, Set<Wait>>();
  readonly #clock: WaitClock;
  readonly #subscribed: Promise<unknown>;
  readonly #onPollError: (err: Error) => void;
  #polling = false;

  /** `pollMs` only for tests: how often the waits are looked at in Redis without a wake-up. */
  constructor(opts: { subscriber: RedisClient; store: DeliveryStore; logger: Logger; pollMs?: number }) {
    this.#store = opts.store;
    this.#subscriber = opts.subscriber;
    this.#clock = new WaitClock(opts.pollMs ?? SAFETY_POLL_MS, () => void this.#poll());
    this.#onPollError = throttledErrorLog(opts.logger, 'safety poll failed');
    this.#subscriber.on('message', (_channel: string, notice: string) => {
      // Every replica receives every notice: only one with a request waiting on it reads the answer.
      const waits = this.#waits.get(noticeJobId(notice));
      if (!waits) return;
      const { granted } = parseAnswerNotice(notice);
      for (const wait of waits) {
        // Granted in the script that stored it, as this attempt's own `take` would have done.
        if (granted && wait.mode === 'take') wait.granted = { state: 'passive', answer: granted, won: true };
        wait.wake();
      }
    });
    const onError = throttledErrorLog(opts.logger, 'subscribe failed');
    // Publishes sent while the subscriber was away are lost: once it is subscribed again (ioredis
    // emits 'ready' before it resubscribes, so subscribe here and wait for Redis to confirm),
    // every wait re-checks at once instead of at the next safety poll.
    const subscribe = () => this.#subscriber.subscribe(opts.store.answersChannel).then(() => this.#clock.wakeAll(), onError);
    this.#subscribed = subscribe();
    let connected = this.#subscriber.status === 'ready';
    this.#subscriber.on('ready', () => {
      if (connected) void subscribe();
      connected = true;
    });
  }

  /** Resolves once the subscription is in place. */
  async ready(): Promise<void> {
    await this.#subscribed;
  }

  /** How many requests wait right now. */
  get waiting(): number {
    return this.#clock.size;
  }

  /**
   * Takes the answer of `jobId` as soon as it exists, or returns the last state seen at `deadline`
   * (ms since epoch). Never waits past the deadline; `signal` ends the wait at once, without a further check.
   */
  async take(jobId: string, deadline: number, opts: TakeOptions = {}): Promise<SettleResult> {
    const mode = opts.mode ?? 'take';
    const { signal } = opts;
    let woken = false;
    let resume: (() => void) | undefined;
    const wait: Wait = {
      mode,
      deadline,
      wake: () => {
        woken = true;
        resume?.();
      },
    };
    this.#register(jobId, wait);
    signal?.addEventListener('abort', wait.wake, { once: true });
    try {
      await opts.onRegistered?.();
      let result: SettleResult = { state: '', answer: undefined, won: false };
      for (let check = !opts.fresh; ; check = true) {
        // WeChat hung up: an answer taken now would reach nobody; the caller hands it over instead.
        if (signal?.aborted) return result;
        if (wait.granted) return wait.granted;
        if (check) {
          woken = false;
          result = await this.#store.settle(jobId, mode);
          if (isOver(mode, result.state)) return result;
        }
        if (signal?.aborted || deadline <= Date.now()) return result;
        // A wake-up during the check set `woken`: check again rather than sleep.
        if (!woken) await new Promise<void>((resolve) => (resume = resolve));
        resume = undefined;
      }
    } finally {
      signal?.removeEventListener('abort', wait.wake);
      this.#unregister(jobId, wait);
    }
  }

  async close(): Promise<void> {
    await this.#subscriber.quit().catch(() => this.#subscriber.disconnect());
  }

  /** Wakes the waits whose job moved on, in case its PUBLISH was lost; one poll at a time. */
  async #poll(): Promise<void> {
    if (this.#polling || this.#waits.size === 0) return;
    this.#polling = true;
    try {
      const progress = await this.#store.progress([...this.#waits.keys()]);
      for (const [jobId, { state, answered }] of progress) {
        // a stored answer ends the wait too: the settle the wake-up runs takes (or fetches) it
        for (const wait of this.#waits.get(jobId) ?? []) if (answered || isOver(wait.mode, state)) wait.wake();
      }
    } catch (err) {
      // Each wait still looks at Redis at its deadline; the next poll tries again.
      this.#onPollError(err as Error);
    } finally {
      this.#polling = false;
    }
  }

  #register(jobId: string, wait: Wait): void {
    const set = this.#waits.get(jobId) ?? new Set();
    set.add(wait);
    this.#waits.set(jobId, set);
    this.#clock.add(wait);
  }

  #unregister(jobId: string, wait: Wait): void {
    this.#clock.delete(wait);
    const set = this.#waits.get(jobId);
    set?.delete(wait);
    if (set?.size === 0) this.#waits.delete(jobId);
  }
}
