import type { Queue } from 'bullmq';
import {
  ANSWER_JOB_OPTIONS,
  JOBS,
  messageJobId,
  type AccountConfig,
  type AnswerJobData,
  type AnswerPart,
  type Config,
  type ConversationStore,
  type DeliveryStore,
  type InboundMessage,
  type Logger,
  type UserOrder,
  messagesFor,
} from '@wxdify/core';
import type { AnswerWaiter } from './answer-waiter.js';


/** What the ingress answers WeChat: a passive reply, `success`, or a failure that makes WeChat retry. */
export type Outcome =
  | { kind: 'reply'; part: AnswerPart }
  | { kind: 'success' }
  | { kind: 'retry' };

export interface ReplyFlowDeps {
  config: Config;
  queue: Queue<AnswerJobData>;
  store: DeliveryStore;
  conversations: ConversationStore;
  order: UserOrder;
  waiter: AnswerWaiter;
}

/** Events acknowledged without asking Dify. */
const SILENT_EVENTS = new Set(['unsubscribe', 'VIEW', 'LOCATION', 'TEMPLATESENDJOBFINISH', 'MASSSENDJOBFINISH']);
const CLEAR_KEY = 'CLEAR_CONTEXT';

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
    await deps.conversations.clear(account.id, message.fromUserName);
    log.info('conversation cleared');
    return textReply(tr('cleared'));
  }
  if (message.kind === 'event' && message.event === 'subscribe' && account.welcomeMessage) {
    return textReply(account.welcomeMessage);
  }

  const jobId = messageJobId(account.id, message);
  const { attempt, firstAt, state } = await deps.store.recordAttempt(jobId, arrivedAt);
  log.debug({ jobId, attempt }, 'attempt');
  if (attempt === 1 || state === '') await enqueue(deps, account, message, jobId, firstAt);

  const deadline = attemptDeadline(deps.config, account, attempt, arrivedAt);
  const result = await deps.waiter.take(jobId, deadline, signal);
  if ((result.state === 'passive' || result.state === 'fetched') && result.answer) {
    return { kind: 'reply', part: result.answer.parts[0] ?? { type: 'text', text: tr('difyError') } };
  }
  if (result.state !== '') return { kind: 'success' };
  if (attempt < 3) return { kind: 'retry' };

  // The last attempt: take the answer if it arrived meanwhile, or hand it over atomically.
  const handoff = account.enableCustomMessage ? 'push' : 'wait';
  const last = await deps.store.settle(jobId, 'last', handoff);
  if (last.state === 'passive' && last.answer) return { kind: 'reply', part: last.answer.parts[0]! };
  if (last.state === 'push') return textReply(tr('timeout'));
  if (last.state === 'wait') return textReply(tr('continueWaiting', { left: account.maxContinueCount }));
  return { kind: 'success' };
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

function isClearCommand(message: InboundMessage): boolean {
  if (message.kind === 'text') return message.content.trim().toLowerCase() === '/clear';
  return message.kind === 'event' && message.event === 'CLICK' && message.eventKey === CLEAR_KEY;
}

function textReply(text: string): Outcome {
  return { kind: 'reply', part: { type: 'text', text } };
}
