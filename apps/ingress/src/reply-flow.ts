import type { Queue } from 'bullmq';
import {
  ANSWER_JOB_OPTIONS,
  JOBS,
  enqueuePush,
  messageJobId,
  messagesFor,
  type AccountConfig,
  type AnswerJobData,
  type AnswerPart,
  type Config,
  type ConversationStore,
  type DeliveryStore,
  type InboundMessage,
  type Logger,
  type PushJobData,
  type SettleResult,
} from '@wxdify/core';
import type { AnswerWaiter, TakeOptions } from './answer-waiter.js';

/** What the ingress answers WeChat: a passive reply, `success`, or a failure that makes WeChat retry. */
export type Outcome = (
  | { kind: 'reply'; part: AnswerPart; path?: 'passive' | 'fetched' }
  | { kind: 'success' }
  | { kind: 'retry' }
) & {
  /** WeChat's attempt number for messages that go to Dify. */
  attempt?: number;
  /** When the message first arrived (ms), for the latency of its answer. */
  firstAt?: number;
};

export interface ReplyFlowDeps {
  config: Config;
  queue: Queue<AnswerJobData>;
  pushQueue: Queue<PushJobData>;
  store: DeliveryStore;
  conversations: ConversationStore;
  waiter: AnswerWaiter;
}

/** Events acknowledged without asking Dify. */
const SILENT_EVENTS = new Set(['unsubscribe', 'VIEW', 'LOCATION', 'TEMPLATESENDJOBFINISH', 'MASSSENDJOBFINISH']);
const CLEAR_KEY = 'CLEAR_CONTEXT';
/** WeChat delivers a message at most three times. */
const LAST_ATTEMPT = 3;

/**
 * Decides the answer to one WeChat attempt. `arrivedAt` is when this request reached us: every
 * attempt's budget is measured from its own arrival (WeChat cuts each request at 5 s).
 */
export async function answerAttempt(
  deps: ReplyFlowDeps,
  account: AccountConfig,
  message: InboundMessage,
  arrivedAt: number,
  log: Logger,
  signal?: AbortSignal,
): Promise<Outcome> {
  const tr = messagesFor(account);
  if (message.kind === 'event' && SILENT_EVENTS.has(message.event)) return { kind: 'success' };
  if (isClearCommand(message)) {
    // Every follower message opens a fresh allowance of customer-service pushes (attempts do it in their script).
    await deps.store.resetPushQuota(account.id, message.fromUserName);
    await deps.conversations.clear(account.id, message.fromUserName);
    log.info('conversation cleared');
    return textReply(tr('cleared'));
  }
  if (message.kind === 'event' && message.event === 'subscribe' && account.welcomeMessage) {
    await deps.store.resetPushQuota(account.id, message.fromUserName);
    return textReply(account.welcomeMessage);
  }
  if (isContinueCommand(message)) {
    const pending = await deps.store.getPending(account.id, message.fromUserName);
    if (pending) {
      const outcome = await fetchPending(deps, account, message, pending, arrivedAt, log, signal);
      if (outcome) return outcome;
    }
  }
  return answerMessage(deps, account, message, arrivedAt, log, signal);
}

/** An answer job as seen from one follower's conversation. */
interface AnswerRef {
  account: AccountConfig;
  openId: string;
  jobId: string;
}

/** One of WeChat's attempts for a message that goes to Dify. */
async function answerMessage(
  deps: ReplyFlowDeps,
  account: AccountConfig,
  message: InboundMessage,
  arrivedAt: number,
  log: Logger,
  signal?: AbortSignal,
): Promise<Outcome> {
  const ref: AnswerRef = { account, openId: message.fromUserName, jobId: messageJobId(account.id, message) };
  const follower = { account: account.id, openId: ref.openId, queued: true };
  const { attempt, firstAt, state } = await deps.store.recordAttempt(ref.jobId, follower, arrivedAt);
  log.debug({ jobId: ref.jobId, attempt }, 'attempt');
  const deadline = attemptDeadline(deps.config, account, attempt, arrivedAt);
  const outcome = await settleAttempt(deps, ref, attempt >= LAST_ATTEMPT, deadline, {
    signal,
    // Adding is idempotent (the job id): a retry on any replica, or after a crash, attaches to the same job.
    onRegistered: state === '' ? () => enqueue(deps, account, message, ref.jobId, firstAt) : undefined,
    fresh: attempt === 1,
  });
  return { ...outcome, attempt, firstAt };
}

/** Waits for the answer until `deadline`; on the last attempt, takes it or hands it over in one atomic step. */
async function settleAttempt(deps: ReplyFlowDeps, ref: AnswerRef, last: boolean, deadline: number, opts: TakeOptions): Promise<Outcome> {
  const tr = messagesFor(ref.account);
  const result = await deps.waiter.take(ref.jobId, deadline, opts);
  if (result.answer && result.state === 'passive') return deliver(deps, ref, result);
  if (result.state !== '') return { kind: 'success' };
  if (!last) return { kind: 'retry' };

  const handoff = (await pushesAllowed(deps, ref.account)) ? 'push' : 'wait';
  const settled = await deps.store.settle(ref.jobId, 'last', handoff);
  if (settled.answer && settled.state === 'passive') return deliver(deps, ref, settled);
  if (settled.state === 'push') return textReply(tr('timeout'));
  if (settled.state === 'wait') {
    await deps.store.setPending(ref.account.id, ref.openId, ref.jobId);
    return textReply(tr('continueWaiting', { left: ref.account.maxContinueCount }));
  }
  return { kind: 'success' };
}

/**
 * The follower sent `1` while an answer is pending: wait on it like an attempt does (up to
 * MAX_CONTINUE_COUNT times), or hand out the next part of an answer already delivered in part.
 * Returns undefined when nothing is left, so the `1` is treated as an ordinary message.
 */
async function fetchPending(
  deps: ReplyFlowDeps,
  account: AccountConfig,
  message: InboundMessage,
  jobId: string,
  arrivedAt: number,
  log: Logger,
  signal?: AbortSignal,
): Promise<Outcome | undefined> {
  const tr = messagesFor(account);
  const ref: AnswerRef = { account, openId: message.fromUserName, jobId };
  // Recorded like an attempt: it opens a fresh push allowance, and WeChat's retries of this `1`
  // count only once against MAX_CONTINUE_COUNT.
  const follower = { account: account.id, openId: ref.openId, queued: false };
  const { attempt } = await deps.store.recordAttempt(messageJobId(account.id, message), follower, arrivedAt);
  const { state } = await deps.store.peek(jobId);
  if (state !== 'wait') return nextPart(deps, ref);

  const count = attempt === 1 ? await deps.store.countContinue(jobId) : Number.MAX_SAFE_INTEGER;
  const waits = count <= account.maxContinueCount;
  const deadline = waits ? arrivedAt + deps.config.wechatTimeoutMs - deps.config.replyMarginMs : arrivedAt;
  const result = await deps.waiter.take(jobId, deadline, { signal, mode: 'fetch' });
  log.info({ jobId, count, state: result.state }, 'follower asked for the pending answer');
  if (result.answer && result.state === 'fetched' && result.won) return deliver(deps, ref, result);
  if (result.state === 'fetched') return nextPart(deps, ref);
  const left = account.maxContinueCount - Math.min(count, account.maxContinueCount);
  return textReply(waits && left > 0 ? tr('continueWaiting', { left }) : tr('stillComing'));
}

/** Replies with the first part of a freshly taken answer; what follows is pushed or left for `1`. */
async function deliver(deps: ReplyFlowDeps, ref: AnswerRef, result: SettleResult): Promise<Outcome> {
  const parts = result.answer!.parts;
  const path = result.state === 'fetched' ? 'fetched' : 'passive';
  const first = parts[0] ?? { type: 'text', text: messagesFor(ref.account)('difyError') };
  if (parts.length <= 1) return { kind: 'reply', part: first, path };
  return { kind: 'reply', part: await handOverRest(deps, ref, first, 1, parts.length - 1), path };
}

/**
 * The next undelivered part of a long answer, for the follower's `1`: claimed with the same atomic
 * step as the push job's, so a `1` arriving while parts are being pushed takes a part no push sends.
 */
async function nextPart(deps: ReplyFlowDeps, ref: AnswerRef): Promise<Outcome | undefined> {
  const next = await deps.store.claimPart(ref.jobId);
  if (!next || next.remaining === 0) await deps.store.clearPending(ref.account.id, ref.openId, ref.jobId);
  if (!next) return undefined;
  const part = next.remaining === 0 ? next.part : await handOverRest(deps, ref, next.part, next.index + 1, next.remaining);
  return { kind: 'reply', part, path: 'fetched' };
}

/**
 * Parts after the one being replied: pushed in order in customer-service mode (the push job
 * stops at WeChat's allowance and leaves the rest for `1`); in waiting mode the follower is told
 * to send `1` for them.
 */
async function handOverRest(
  deps: ReplyFlowDeps,
  ref: AnswerRef,
  part: AnswerPart,
  next: number,
  remaining: number,
): Promise<AnswerPart> {
  await deps.store.setPending(ref.account.id, ref.openId, ref.jobId);
  if (await pushesAllowed(deps, ref.account)) {
    // `next` (the part after the one being replied) only names the push job; the job claims its parts in Redis.
    await enqueuePush(deps.pushQueue, { account: ref.account.id, answerJobId: ref.jobId, openId: ref.openId }, next);
    return part;
  }
  if (part.type !== 'text') return part;
  return { type: 'text', text: `${part.text}\n\n${messagesFor(ref.account)('moreParts', { count: remaining })}` };
}

/** How long one attempt may wait: the first uses WeChat's whole window, retries the configured share of it. */
export function attemptDeadline(config: Config, account: AccountConfig, attempt: number, arrivedAt: number): number {
  const max = config.wechatTimeoutMs - config.replyMarginMs;
  const budget = attempt === 1 ? max : Math.min(max, Math.round(config.wechatTimeoutMs * account.retryWaitTimeoutRatio));
  return arrivedAt + budget;
}

async function enqueue(deps: ReplyFlowDeps, account: AccountConfig, message: InboundMessage, jobId: string, firstAt: number) {
  await deps.queue.add(JOBS.answer, { account: account.id, message, receivedAt: firstAt }, { ...ANSWER_JOB_OPTIONS, jobId });
}

/** Customer-service mode, unless WeChat told a worker the account lacks the permission (48001). */
async function pushesAllowed(deps: ReplyFlowDeps, account: AccountConfig): Promise<boolean> {
  return account.enableCustomMessage && !(await deps.store.customServiceBlocked(account.id));
}

function isClearCommand(message: InboundMessage): boolean {
  if (message.kind === 'text') return message.content.trim().toLowerCase() === '/clear';
  return message.kind === 'event' && message.event === 'CLICK' && message.eventKey === CLEAR_KEY;
}

function isContinueCommand(message: InboundMessage): boolean {
  return message.kind === 'text' && message.content.trim() === '1';
}

function textReply(text: string): Outcome {
  return { kind: 'reply', part: { type: 'text', text } };
}
