import { setTimeout as sleep } from 'node:timers/promises';
import { QueueEvents } from 'bullmq';
import { QUEUES, throttledErrorLog, type DeliveryStore, type Logger, type RedisClient, type SettleResult } from '@wxdify/core';

/** Re-checks Redis this often while waiting, in case a QueueEvents entry was missed (the stream is best-effort). */
const SAFETY_POLL_MS = 1000;

/**
 * Waits for answers across every request of this process with one QueueEvents connection:
 * a map of job id → wake-up callbacks, fed by a single `completed`/`failed` listener.
 * Each wait settles through Redis first, so an answer that was ready before the wait began is
 * seen at once, and an event arriving between the check and the sleep still wakes it.
 */
export class AnswerWaiter {
  readonly #events: QueueEvents;
  readonly #store: DeliveryStore;
  readonly #wakers = new Map<string, Set<() => void>>();

  constructor(opts: { connection: RedisClient; prefix: string; store: DeliveryStore; logger: Logger }) {
    this.#store = opts.store;
    this.#events = new QueueEvents(QUEUES.answer, { connection: opts.connection as never, prefix: opts.prefix, autorun: true });
    const wake = ({ jobId }: { jobId: string }) => {
      for (const fn of this.#wakers.get(jobId) ?? []) fn();
    };
    this.#events.on('completed', wake);
    this.#events.on('failed', wake);
    this.#events.on('error', throttledErrorLog(opts.logger, 'queue events error'));
  }

  /** Resolves when the QueueEvents connection is up. */
  async ready(): Promise<void> {
    await this.#events.waitUntilReady();
  }

  /** Number of requests waiting right now. */
  get waiting(): number {
    let n = 0;
    for (const set of this.#wakers.values()) n += set.size;
    return n;
  }

  /**
   * Takes the answer of `jobId` as soon as it exists, or returns the last state seen at `deadline`
   * (ms since epoch). Never waits past the deadline; `signal` ends the wait early. `take` is a
   * WeChat attempt (done once the state leaves "open"); `fetch` is the follower's `1` (done once
   * the answer left "wait").
   */
  async take(jobId: string, deadline: number, signal?: AbortSignal, mode: 'take' | 'fetch' = 'take'): Promise<SettleResult> {
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
      for (;;) {
        woken = false;
        const result = await this.#store.settle(jobId, mode);
        if (result.state !== '' && (mode === 'take' || result.state !== 'wait')) return result;
        const remaining = deadline - Date.now();
        if (remaining <= 0 || signal?.aborted) return result;
        if (woken) continue;
        const ac = new AbortController();
        wakeUp = () => ac.abort();
        const onAbort = () => ac.abort();
        signal?.addEventListener('abort', onAbort, { once: true });
        await sleep(Math.min(remaining, SAFETY_POLL_MS), undefined, { signal: ac.signal }).catch(() => undefined);
        signal?.removeEventListener('abort', onAbort);
        wakeUp = undefined;
      }
    } finally {
      set.delete(waker);
      if (set.size === 0) this.#wakers.delete(jobId);
    }
  }

  async close(): Promise<void> {
    await this.#events.close();
  }
}
