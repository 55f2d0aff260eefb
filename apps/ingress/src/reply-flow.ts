import type { Queue } from 'bullmq';
import {
  ANSWER_JOB_OPTIONS,
  JOBS,
  PUSH_JOB_OPTIONS,
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
  type UserOrder,
} from '@wxdify/core';
import type { AnswerWaiter } from './answer-waiter.js';

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
  order: UserOrder;
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
  // Every follower message opens a fresh allowance of customer-service pushes.
  await deps.store.resetPushQuota(account.id, message.fromUserName);
  if (isClearCommand(message)) {
    await deps.conversations.clear(account.id, message.fromUserName);
    log.info('conversation cleared');
    return textReply(tr('cleared'));
  }
  if (message.kind === 'event' && message.event === 'subscribe' && account.welcomeMessage) {
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

/** One of WeChat's attempts for a message that goes to Dify. */
async function answerMessage(
  deps: ReplyFlowDeps,
  account: AccountConfig,
  message: InboundMessage,
  arrivedAt: number,
  log: Logger,
  signal?: AbortSignal,
): Promise<Outcome> {
  const jobId = messageJobId(account.id, message);
  const { attempt, firstAt, state } = await deps.store.recordAttempt(jobId, arrivedAt);
  log.debug({ jobId, attempt }, 'attempt');
  const outcome = await waitForAnswer(deps, account, message, jobId, attempt, firstAt, state, arrivedAt, signal);
  return { ...outcome, attempt, firstAt };
}

async function waitForAnswer(
  deps: ReplyFlowDeps,
  account: AccountConfig,
  message: InboundMessage,
  jobId: string,
  attempt: number,
  firstAt: number,
  state: string,
  arrivedAt: number,
  signal?: AbortSignal,
): Promise<Outcome> {
  const tr = messagesFor(account);
  // Adding is idempotent (the job id): a retry on any replica, or after a crash, attaches to the same job.
  if (state === '') await enqueue(deps, account, message, jobId, firstAt);

  const result = await deps.waiter.take(jobId, attemptDeadline(deps.config, account, attempt, arrivedAt), signal);
  if (result.answer && result.state === 'passive') return deliver(deps, account, jobId, message.fromUserName, result);
  if (result.state !== '') return { kind: 'success' };
  if (attempt < LAST_ATTEMPT) return { kind: 'retry' };

  // The last attempt: take the answer if it arrived meanwhile, or hand it over, in one atomic step.
  const handoff = (await pushesAllowed(deps, account)) ? 'push' : 'wait';
  const last = await deps.store.settle(jobId, 'last', handoff);
  if (last.answer && last.state === 'passive') return deliver(deps, account, jobId, message.fromUserName, last);
  if (last.state === 'push') return textReply(tr('timeout'));
  if (last.state === 'wait') {
    await deps.store.setPending(account.id, message.fromUserName, jobId);
    return textReply(tr('continueWaiting', { left: account.maxContinueCount }));
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
  const openId = message.fromUserName;
  const { state } = await deps.store.peek(jobId);
  if (state !== 'wait') return nextPart(deps, account, jobId, openId);

  // WeChat retries this `1` too: only its first attempt counts against MAX_CONTINUE_COUNT.
  const { attempt } = await deps.store.recordAttempt(messageJobId(account.id, message), arrivedAt);
  const count = attempt === 1 ? await deps.store.countContinue(jobId) : Number.MAX_SAFE_INTEGER;
  const waits = count <= account.maxContinueCount;
  const deadline = waits ? arrivedAt + deps.config.wechatTimeoutMs - deps.config.replyMarginMs : arrivedAt;
  const result = await deps.waiter.take(jobId, deadline, signal, 'fetch');
  log.info({ jobId, count, state: result.state }, 'follower asked for the pending answer');
  if (result.answer && result.state === 'fetched' && result.won) return deliver(deps, account, jobId, openId, result);
  if (result.state === 'fetched') return nextPart(deps, account, jobId, openId);
  const left = account.maxContinueCount - Math.min(count, account.maxContinueCount);
  return textReply(waits && left > 0 ? tr('continueWaiting', { left }) : tr('stillComing'));
}

/** Replies with the first part of a freshly taken answer; what follows is pushed or left for `1`. */
async function deliver(deps: ReplyFlowDeps, account: AccountConfig, jobId: string, openId: string, result: SettleResult): Promise<Outcome> {
  const parts = result.answer!.parts;
  const path = result.state === 'fetched' ? 'fetched' : 'passive';
  const first = parts[0] ?? { type: 'text', text: messagesFor(account)('difyError') };
  if (parts.length <= 1) return { kind: 'reply', part: first, path };
  return { kind: 'reply', part: await handOverRest(deps, account, jobId, openId, first, parts.length - 1), path };
}

/** The next undelivered part of a long answer, for the follower's `1`. */
async function nextPart(deps: ReplyFlowDeps, account: AccountConfig, jobId: string, openId: string): Promise<Outcome | undefined> {
  const next = await deps.store.takeNextPart(jobId);
  if (!next) {
    await deps.store.clearPending(account.id, openId, jobId);
    return undefined;
  }
  if (next.remaining === 0) {
    await deps.store.clearPending(account.id, openId, jobId);
    return { kind: 'reply', part: next.part, path: 'fetched' };
  }
  return { kind: 'reply', part: await handOverRest(deps, account, jobId, openId, next.part, next.remaining), path: 'fetched' };
}

/**
 * Parts after the one being replied: pushed in order in customer-service mode (the push job
 * stops at WeChat's allowance and leaves the rest for `1`); in waiting mode the follower is told
 * to send `1` for them.
 */
async function handOverRest(
  deps: ReplyFlowDeps,
  account: AccountConfig,
  jobId: string,
  openId: string,
  part: AnswerPart,
  remaining: number,
): Promise<AnswerPart> {
  await deps.store.setPending(account.id, openId, jobId);
  if (await pushesAllowed(deps, account)) {
    const { next } = await deps.store.peek(jobId);
    const data = { account: account.id, answerJobId: jobId, openId };
    await deps.pushQueue.add(JOBS.push, data, { ...PUSH_JOB_OPTIONS, jobId: `push~${jobId}~${next}` });
    return part;
  }
  if (part.type !== 'text') return part;
  return { type: 'text', text: `${part.text}\n\n${messagesFor(account)('moreParts', { count: remaining })}` };
}

/** How long one attempt may wait: the first uses WeChat's whole window, retries the configured share of it. */
export function attemptDeadline(config: Config, account: AccountConfig, attempt: number, arrivedAt: number): number {
  const max = config.wechatTimeoutMs - config.replyMarginMs;
  const budget = attempt === 1 ? max : Math.min(max, Math.round(config.wechatTimeoutMs * account.retryWaitTimeoutRatio));
  return arrivedAt + budget;
}

async function enqueue(deps: ReplyFlowDeps, account: AccountConfig, message: InboundMessage, jobId: string, firstAt: number) {
  await deps.order.enqueue(account.id, message.fromUserName, jobId, firstAt);
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
