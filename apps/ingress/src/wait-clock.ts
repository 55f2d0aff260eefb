/** A request waiting for an answer, as the clock sees it. */
export interface ClockEntry {
  /** Ms since epoch when this wait must end. */
  readonly deadline: number;
  /** Makes the waiting request look at Redis again (and notice its deadline). */
  readonly wake: () => void;
}

/**
 * One timer for every request waiting in this process (issue 2: no timer loop per waiting
 * request). It wakes each entry at its own deadline, and every `pollMs` it calls `poll`, which
 * looks at Redis once for all of them in case a wake-up was missed (pub/sub is at-most-once). The
 * timer is armed for the earliest of those moments, and only while something waits.
 */
export class WaitClock {
  readonly #entries = new Set<ClockEntry>();
  readonly #pollMs: number;
  readonly #poll: () => void;
  #timer: NodeJS.Timeout | undefined;
  #fireAt = Infinity;
  #nextPoll = 0;

  constructor(pollMs: number, poll: () => void) {
    this.#pollMs = pollMs;
    this.#poll = poll;
  }

  /** How many requests wait right now. */
  get size(): number {
    return this.#entries.size;
  }

  /** Starts keeping time for `entry`. */
  add(entry: ClockEntry): void {
    if (this.#entries.size === 0) this.#nextPoll = Date.now() + this.#pollMs;
    this.#entries.add(entry);
    this.#arm(Math.min(entry.deadline, this.#nextPoll));
  }

  /** Stops keeping time for `entry`; the timer goes with the last one. */
  delete(entry: ClockEntry): void {
    this.#entries.delete(entry);
    if (this.#entries.size > 0) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#fireAt = Infinity;
  }

  /** Wakes every waiting request now (e.g. after the subscriber reconnected and may have missed wake-ups). */
  wakeAll(): void {
    for (const entry of [...this.#entries]) entry.wake();
  }

  #arm(at: number): void {
    // An earlier or equal moment is already scheduled: that firing re-arms for the rest.
    if (at >= this.#fireAt) return;
    clearTimeout(this.#timer);
    this.#fireAt = at;
    this.#timer = setTimeout(() => this.#fire(), Math.max(0, at - Date.now()));
  }

  #fire(): void {
    this.#timer = undefined;
    this.#fireAt = Infinity;
    const now = Date.now();
    const poll = now >= this.#nextPoll;
    if (poll) this.#nextPoll = now + this.#pollMs;
    let next = this.#nextPoll;
    if (poll) this.#poll();
    for (const entry of [...this.#entries]) {
      if (entry.deadline <= now) entry.wake();
      // Timers may fire a millisecond before Date.now() reaches the deadline: such an entry is re-armed, not lost.
      if (entry.deadline > now) next = Math.min(next, entry.deadline);
    }
    if (this.#entries.size > 0) this.#arm(next);
  }
}
