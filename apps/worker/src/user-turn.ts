import type { Job, Queue } from 'bullmq';
import { parkJob, promoteIfDelayed, type AnswerJobData, type DeliveryStore } from '@wxdify/core';

/** A job that is not its follower's turn sleeps this long unless the job before it promotes it sooner. */
const TURN_RETRY_MS = 5000;
/** A head of line that never became a job (an ingress died between the two writes) is skipped after this. */
const ORPHAN_HEAD_MS = 30_000;

/**
 * One conversation per follower, in order (DESIGN 4): a job runs only when it heads its follower's
 * line (a sorted set by first arrival, written by the ingress); otherwise it goes back to `delayed`
 * and is promoted by the job before it when that one ends. Other followers' jobs keep running.
 */
export class UserTurns {
  readonly #store: DeliveryStore;
  readonly #queue: Queue<AnswerJobData>;

  constructor(store: DeliveryStore, queue: Queue<AnswerJobData>) {
    this.#store = store;
    this.#queue = queue;
  }

  /**
   * Returns when it is `job`'s turn, with what `read` gives as of then; otherwise parks the job and
   * throws DelayedError (BullMQ's "not now"). `read` (on the same Redis connection as the store,
   * e.g. the follower's conversation) is sent right behind the first check: Redis runs one
   * connection's commands in order, so when that check finds the turn, `read` saw everything the
   * job before it wrote, and one round trip served both. If the turn comes later, `read` runs again.
   */
  async acquire<T>(job: Job<AnswerJobData>, token: string | undefined, read: () => Promise<T>): Promise<T> {
    const { account, message } = job.data;
    const openId = message.fromUserName;
    const first = this.#store.lineHead(account, openId);
    const early = read();
    early.catch(() => undefined); // left unused when the turn comes later
    for (let i = 0; i < 10; i++) {
      const head = i === 0 ? await first : await this.#store.lineHead(account, openId);
      if (head === undefined || head === job.id) return i === 0 ? early : read();
      if ((await this.#store.arrivedAt(account, openId, job.id!)) === undefined) return read();
      if (!(await this.#isOver(account, openId, head))) break;
      await this.#store.leaveLine(account, openId, head);
    }
    return parkJob(job, token, TURN_RETRY_MS);
  }

  /** Wakes the next job in a follower's line at once (its turn came when the previous one stored its answer). */
  async wake(next: string | undefined): Promise<void> {
    if (next !== undefined) await promoteIfDelayed(this.#queue, next);
  }

  async #isOver(account: string, openId: string, jobId: string): Promise<boolean> {
    const state = await this.#queue.getJobState(jobId);
    if (state === 'completed' || state === 'failed') return true;
    if (state !== 'unknown') return false;
    // Still not a job long after it took its place in line: the ingress died between the two writes.
    const arrivedAt = await this.#store.arrivedAt(account, openId, jobId);
    return arrivedAt === undefined || arrivedAt < Date.now() - ORPHAN_HEAD_MS;
  }
}
