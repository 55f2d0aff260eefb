import { DelayedError, type Job, type JobsOptions, type Queue } from 'bullmq';
import type { ConversationRef } from './conversation-store.js';
import type { InboundMessage } from './wechat/index.js';

/**
 * Queue names. They are stored in Redis (keys `<prefix>:<name>:*`) and read by the dashboard
 * and by autoscalers (KEDA lists `<prefix>:answer:wait`): never rename one casually.
 */
export const QUEUES = {
  /** One job per follower message: ask Dify, store the answer, hand it over for delivery. */
  answer: 'answer',
  /** Customer-service pushes of late answers and of the parts after the first. */
  push: 'push',
} as const;
export type QueueName = (typeof QUEUES)[keyof typeof QUEUES];

/** Job names inside the queues, each declared once with its payload below. */
export const JOBS = {
  answer: 'answer',
  push: 'push',
} as const;

/** Payload of an `answer` job: everything the worker needs, no secrets (job data is stored in clear). */
export interface AnswerJobData {
  account: string;
  message: InboundMessage;
  /** When the first attempt reached an ingress (ms since epoch). */
  receivedAt: number;
  /**
   * Present when the message headed its follower's line as it was enqueued: its turn has come
   * already, and this is the follower's conversation as of then (a `/clear` sent after the message
   * applies to the messages after it). The worker's first run starts at once with it.
   */
  headOfLine?: ConversationRef;
}

/** Payload of a `push` job: send the undelivered parts of an answer, in order. */
export interface PushJobData {
  account: string;
  answerJobId: string;
  openId: string;
}


/**
 * Bytes per text part: WeChat's 2048 less room for the "reply 1 for more" notice that a part may
 * carry when the rest has to wait (the notice is at most ~150 bytes in every language).
 */
export const ANSWER_PART_MAX_BYTES = 2048 - 192;

/** What the follower receives: text parts (each within WeChat's 2048 bytes) and images (temporary media ids). */
export type AnswerPart = { type: 'text'; text: string } | { type: 'image'; mediaId: string };

/** The answer of one message as stored in Redis until it is delivered. */
export interface StoredAnswer {
  parts: AnswerPart[];
  /** Ms since epoch when the worker had it. */
  readyAt: number;
  /** True when the answer is our own error text rather than Dify's. */
  failed?: boolean;
}

/** Result stored by BullMQ for a completed `answer` job (small: it travels in every QueueEvents entry). */
export interface AnswerJobResult {
  parts: number;
  state: string;
}

/**
 * Finished jobs stay an hour (at most 10,000: on a busy account only seconds) for the dashboard.
 * Nothing depends on them staying: a retry of a message whose answer is stored never adds its job
 * again (the attempt script tells), and the answer itself lives in the delivery state (48 h).
 */
export const ANSWER_JOB_OPTIONS: JobsOptions = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 3600, count: 10_000 },
  removeOnFail: { age: 86_400 },
};

export const PUSH_JOB_OPTIONS: JobsOptions = {
  attempts: 5,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 3600, count: 10_000 },
  removeOnFail: { age: 86_400 },
};

/**
 * The idempotency key of a message, used as its BullMQ job id, so a retry on any replica attaches
 * to the same job. Messages: account + FromUserName + MsgId (a bare MsgId has collided across users);
 * events: account + FromUserName + CreateTime + Event + EventKey. BullMQ forbids `:` in custom ids
 * and integer-looking ids, hence the separators and the `m`/`e` prefix.
 */
export function messageJobId(account: string, message: InboundMessage): string {
  if (message.kind === 'event') {
    const key = encodeURIComponent(message.eventKey ?? '');
    return `e~${account}~${message.fromUserName}~${message.createTime}~${encodeURIComponent(message.event)}~${key}`;
  }
  return `m~${account}~${message.fromUserName}~${message.msgId ?? message.createTime}`;
}

/**
 * Puts the running `job` back to `delayed` until `delayMs` from now, without using an attempt, and
 * throws BullMQ's DelayedError so its processor ends there ("not now": a turn to wait for, a shutdown).
 */
export async function parkJob(job: Job, token: string | undefined, delayMs: number): Promise<never> {
  await job.moveToDelayed(Date.now() + delayMs, token);
  throw new DelayedError();
}

/** True while BullMQ would run `job` again after this run fails (an attempt is left). */
export function hasAttemptLeft(job: Job): boolean {
  return job.attemptsMade + 1 < (job.opts.attempts ?? 1);
}

/**
 * Runs a delayed job now: a job parked until its turn, woken by the job before it. A job that is
 * not delayed (already waiting, running, or gone) is left alone: BullMQ's promote checks that in
 * its script and refuses, and the refusal is dropped. A lost race is harmless, the parked job
 * looks again when its delay ends.
 */
export async function promoteIfDelayed(queue: Queue, jobId: string): Promise<void> {
  const job = await queue.getJob(jobId);
  await job?.promote().catch(() => undefined);
}

/** Queues the push of an answer's parts from `next` on; the job id makes a repeated hand-over a no-op. */
export async function enqueuePush(queue: Queue<PushJobData>, data: PushJobData, next: number): Promise<void> {
  await queue.add(JOBS.push, data, { ...PUSH_JOB_OPTIONS, jobId: `push~${data.answerJobId}~${next}` });
}
