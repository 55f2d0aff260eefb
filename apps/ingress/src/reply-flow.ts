import type { Queue } from 'bullmq';
import {
  ANSWER_JOB_OPTIONS,
  JOBS,
  enqueuePush,
  messageJobId,
  messagesFor,
  pushAllowanceFor,
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

/**
 * What the ingress answers WeChat: a passive reply, `success`, or a failure that makes WeChat retry.
 * `path`: how an answer reached the follower; none for a later part of one already delivered.
 */
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

/** What an attempt learnt so far, for the route's hard cap to answer with when Redis is slow. */
export interface AttemptProgress {
  attempt?: number;
  /** Where the last attempt hands the answer over, once known. */
  handoff?: 'push' | 'wait';
}

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
  progress: AttemptProgress = {},
): Promise<Outcome> {
  const tr = messagesFor(account);
  if (message.kind === 'event' && SILENT_EVENTS.has(message.event)) {
    // Counted like an attempt so WeChat's retries of it are not new messages; it opens no push allowance.
    return { kind: 'success', attempt: await countAttempt(deps, account, message, arrivedAt) };
  }
  if (isClearCommand(message)) {
    // A follower message (or menu click) opens a fresh allowance of customer-service pushes (in the attempt script).
    const attempt = await countAttempt(deps, account, message, arrivedAt);
    await deps.conversations.clear(account.id, message.fromUserName);
    log.info('conversation cleared');
    return { ...textReply(tr('cleared')), attempt };
  }
  if (message.kind === 'event' && message.event === 'subscribe' && account.welcomeMessage) {
    const attempt = await countAttempt(deps, account, message, arrivedAt);
    return { ...textReply(account.welcomeMessage), attempt };
  }
  if (isContinueCommand(message)) {
    const pending = await deps.store.getPending(account.id, message.fromUserName);
    if (pending) {
      const outcome = await fetchPending(deps, account, message, pending, arrivedAt, log, signal);
      if (outcome) return outcome;
    }
  }
  return answerMessage(deps, account, message, arrivedAt, log, signal, progress);
}

/** Records one of WeChat's attempts at a message that does not go to Dify; returns its number. */
async function countAttempt(deps: ReplyFlowDeps, account: AccountConfig, message: InboundMessage, arrivedAt: number) {
  const follower = { account: account.id, openId: message.fromUserName, queued: false, allowance: pushAllowanceFor(message) };
  return (await deps.store.recordAttempt(messageJobId(account.id, message), follower, arrivedAt)).attempt;
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
  signal: AbortSignal | undefined,
  progress: AttemptProgress,
): Promise<Outcome> {
  const ref: AnswerRef = { account, openId: message.fromUserName, jobId: messageJobId(account.id, message) };
  const follower = { account: account.id, openId: ref.openId, queued: true, allowance: pushAllowanceFor(message) };
  // Attempts before the last may be granted the answer by the worker while they wait (FINISH_LUA).
  const grantUntil = Array.from({ length: LAST_ATTEMPT - 1 }, (_, i) => attemptDeadline(deps.config, account, i + 1, arrivedAt));
  const { attempt, firstAt, state, answered, headOfLine } = await deps.store.recordAttempt(ref.jobId, follower, arrivedAt, grantUntil);
  progress.attempt = attempt;
  log.debug({ jobId: ref.jobId, attempt }, 'attempt');
  const deadline = attemptDeadline(deps.config, account, attempt, arrivedAt);
  const last = attempt >= LAST_ATTEMPT;
  const outcome = await settleAttempt(deps, ref, last ? { notAfter: replyNotAfter(deps.config, arrivedAt), progress } : undefined, deadline, {
    signal,
    // Adding is idempotent (the job id): a retry on any replica, or after a crash, attaches to the
    // same job. A job whose answer is stored is over, and may have left BullMQ (its retention is
    // bounded): adding it again would ask Dify again.
    onRegistered: state === '' && !answered ? () => enqueue(deps, ref.jobId, { account: account.id, message, receivedAt: firstAt, ...(headOfLine ? { headOfLine } : {}) }) : undefined,
    fresh: attempt === 1,
  });
  return { ...outcome, attempt, firstAt };
}

/**
 * Waits for the answer until `deadline`; on the last attempt (`last` set), takes it or hands it
 * over in one atomic step. A request WeChat already dropped never takes the answer passively.
 */
async function settleAttempt(
  deps: ReplyFlowDeps,
  ref: AnswerRef,
  last: { notAfter: number; progress: AttemptProgress } | undefined,
  deadline: number,
  opts: TakeOptions,
): Promise<Outcome> {
  let result = await deps.waiter.take(ref.jobId, deadline, opts);
  if (last) result = await settleLast(deps, ref, last, result, opts.signal);
  if (result.answer && result.state === 'passive') {
    const outcome = await deliver(deps, ref, result);
    // The route's cap may have answered while the rest was handed on: then this reply never leaves.
    if (!last || !grantedToGone(result, opts.signal)) return outcome;
    result = await settleLast(deps, ref, last, result, opts.signal);
  }
  // Handed over (here, by a sweep, or by an earlier last attempt): tell the follower how it comes.
  if (result.state === 'push') {
    if (result.won && result.answer) await pushHandedOver(deps, ref);
    return handoffReply(ref.account, 'push');
  }
  if (result.state === 'wait') return handoffReply(ref.account, 'wait');
  if (result.state !== '') return { kind: 'success' };
  return { kind: 'retry' };
}

/**
 * The last attempt takes the answer or hands it over, atomically. A passive grant to a request
 * that went away (WeChat hung up, or the route's cap answered) is handed over after all: no
 * retry comes after the last attempt to repeat it.
 */
async function settleLast(
  deps: ReplyFlowDeps,
  ref: AnswerRef,
  { progress, notAfter }: { notAfter: number; progress: AttemptProgress },
  result: SettleResult,
  signal: AbortSignal | undefined,
): Promise<SettleResult> {
  const handoff = async () => (progress.handoff ??= (await pushesAllowed(deps, ref.account)) ? 'push' : 'wait');
  const follower = { account: ref.account.id, openId: ref.openId };
  if (result.state === '') {
    result = await deps.store.settle(ref.jobId, signal?.aborted ? 'handoff' : 'last', await handoff(), { follower, notAfter });
  }
  if (grantedToGone(result, signal)) result = await deps.store.settle(ref.jobId, 'reclaim', await handoff(), { follower });
  return result;
}

/** True when this request won the answer but can no longer reply with it. */
function grantedToGone(result: SettleResult, signal: AbortSignal | undefined): boolean {
  return result.won && (result.state === 'passive' || result.state === 'fetched') && signal?.aborted === true;
}

/** Enqueues the push of an answer this attempt handed over, then drops its due entry (kept until now, see SETTLE_LUA). */
async function pushHandedOver(deps: ReplyFlowDeps, ref: AnswerRef): Promise<void> {
  await enqueuePush(deps.pushQueue, { account: ref.account.id, answerJobId: ref.jobId, openId: ref.openId }, 0);
  await deps.store.dropDue(ref.jobId);
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
  // count only once against MAX_CONTINUE_COUNT. The two touch different keys: one round trip.
  const [attempt, { state, firstAt }] = await Promise.all([countAttempt(deps, account, message, arrivedAt), deps.store.peek(jobId)]);
  // `attempt` is this `1`'s (its retries are not new messages); `firstAt` the answered message's (its latency).
  const counted = (outcome: Outcome | undefined) => outcome && { ...outcome, attempt, firstAt };
  if (state !== 'wait') return counted(await nextPart(deps, ref));

  const count = attempt === 1 ? await deps.store.countContinue(jobId) : Number.MAX_SAFE_INTEGER;
  const waits = count <= account.maxContinueCount;
  const deadline = waits ? arrivedAt + deps.config.wechatTimeoutMs - deps.config.replyMarginMs : arrivedAt;
  let result = await deps.waiter.take(jobId, deadline, { signal, mode: 'fetch' });
  log.info({ jobId, count, state: result.state }, 'follower asked for the pending answer');
  // The `1`'s request is gone (before or while the reply was made): put the answer back for the next `1`.
  const reclaim = () => deps.store.settle(jobId, 'reclaim', 'wait', { follower: { account: account.id, openId: ref.openId } });
  if (grantedToGone(result, signal)) result = await reclaim();
  if (result.answer && result.state === 'fetched' && result.won) {
    const outcome = await deliver(deps, ref, result);
    if (!grantedToGone(result, signal)) return counted(outcome);
    result = await reclaim();
  }
  if (result.state === 'fetched') return counted(await nextPart(deps, ref));
  const left = account.maxContinueCount - Math.min(count, account.maxContinueCount);
  return { ...textReply(waits && left > 0 ? tr('continueWaiting', { left }) : tr('stillComing')), attempt };
}

/** Replies with the first part of a freshly taken answer; what follows is pushed or left for `1`. */
async function deliver(deps: ReplyFlowDeps, ref: AnswerRef, result: SettleResult): Promise<Outcome> {
  const parts = result.answer!.parts;
  const path = result.state === 'fetched' ? 'fetched' : 'passive';
  const first = parts[0] ?? { type: 'text', text: messagesFor(ref.account)('difyError') };
  if (parts.length <= 1) return { kind: 'reply', part: first, path };
  // The rest stays reachable with `1`; an answer a `1` fetched was found in the pending set already.
  if (path === 'passive') await deps.store.setPending(ref.account.id, ref.openId, ref.jobId);
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
  // A later part of an answer that reached the follower already: no `path`, not another answer delivered.
  return { kind: 'reply', part };
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
  if (await pushesAllowed(deps, ref.account)) {
    // `next` (the part after the one being replied) only names the push job; the job claims its parts in Redis.
    await enqueuePush(deps.pushQueue, { account: ref.account.id, answerJobId: ref.jobId, openId: ref.openId }, next);
    return part;
  }
  if (part.type !== 'text') return part;
  return { type: 'text', text: `${part.text}\n\n${messagesFor(ref.account)('moreParts', { count: remaining })}` };
}

/**
 * The last moment (ms epoch, checked against Redis's clock) at which a passive take is granted:
 * after the attempt's wait, with room for the reply to still leave within WeChat's window.
 */
export function replyNotAfter(config: Config, arrivedAt: number): number {
  return arrivedAt + config.wechatTimeoutMs - Math.ceil((config.replyMarginMs * 3) / 4);
}

/** When the route answers whatever Redis does (after replyNotAfter, before WeChat cuts the request). */
export function replyCap(config: Config, arrivedAt: number): number {
  return arrivedAt + config.wechatTimeoutMs - Math.ceil(config.replyMarginMs / 2);
}

/** How long one attempt may wait: the first uses WeChat's whole window, retries the configured share of it. */
export function attemptDeadline(config: Config, account: AccountConfig, attempt: number, arrivedAt: number): number {
  const max = config.wechatTimeoutMs - config.replyMarginMs;
  const budget = attempt === 1 ? max : Math.min(max, Math.round(config.wechatTimeoutMs * account.retryWaitTimeoutRatio));
  return arrivedAt + budget;
}

async function enqueue(deps: ReplyFlowDeps, jobId: string, data: AnswerJobData) {
  await deps.queue.add(JOBS.answer, data, { ...ANSWER_JOB_OPTIONS, jobId });
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

/** What the last attempt says of an answer handed over: it will be pushed, or the follower sends `1`. */
function handoffReply(account: AccountConfig, handoff: 'push' | 'wait'): Outcome {
  const tr = messagesFor(account);
  return textReply(handoff === 'push' ? tr('timeout') : tr('continueWaiting', { left: account.maxContinueCount }));
}

/**
 * What the route answers when its cap comes before the attempt's outcome (Redis too slow): a
 * non-last attempt fails so WeChat retries; the last one says where the answer goes. Never the
 * answer itself: no script granted it to this request.
 */
export function cappedOutcome(account: AccountConfig, progress: AttemptProgress): Outcome {
  const attempt = progress.attempt;
  if (attempt === undefined || attempt < LAST_ATTEMPT) return { kind: 'retry', ...(attempt === undefined ? {} : { attempt }) };
  return { ...handoffReply(account, progress.handoff ?? (account.enableCustomMessage ? 'push' : 'wait')), attempt };
}

function textReply(text: string): Outcome {
  return { kind: 'reply', part: { type: 'text', text } };
}
