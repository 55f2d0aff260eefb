import { UnrecoverableError, type Job, type Queue } from 'bullmq';
import {
  AppError,
  JOBS,
  PUSH_JOB_OPTIONS,
  messagesFor,
  shapeAnswer,
  splitText,
  type AccountConfig,
  type AnswerJobData,
  type AnswerJobResult,
  type AnswerPart,
  type Config,
  type ConversationStore,
  type DeliveryStore,
  type DifyClient,
  type Logger,
  type PushJobData,
  type SettleJobData,
} from '@wxdify/core';
import { buildDifyRequest } from '../dify-request.js';
import type { UserTurns } from '../user-turn.js';

export interface AnswerProcessorDeps {
  config: Config;
  logger: Logger;
  store: DeliveryStore;
  conversations: ConversationStore;
  turns: UserTurns;
  pushQueue: Queue<PushJobData | SettleJobData>;
  difyFor: (account: AccountConfig) => DifyClient;
}

/** WeChat's third attempt arrives about 10 s after the first and may wait most of 5 s more. */
export function passiveWindowEnd(config: Config, firstAt: number): number {
  return firstAt + 3 * config.wechatTimeoutMs + 1500;
}

/**
 * Answers one follower message: waits for the follower's turn, asks Dify (saving the conversation
 * id as soon as it is known), shapes the answer into WeChat parts, stores it, and hands it over.
 */
export function createAnswerProcessor(deps: AnswerProcessorDeps) {
  return async (job: Job<AnswerJobData>, token?: string, signal?: AbortSignal): Promise<AnswerJobResult> => {
    const { config, store } = deps;
    const account = config.accounts.get(job.data.account);
    if (!account) throw new UnrecoverableError(`unknown account ${job.data.account}`);
    const log = deps.logger.child({ jobId: job.id, account: account.id, msgId: job.data.message.msgId });
    await deps.turns.acquire(job, token);

    const parts = await askForParts(deps, account, job, log, signal);
    const state = await store.saveAnswer(job.id!, { parts, readyAt: Date.now() });
    await deps.turns.release(job);
    const handover = { account: account.id, answerJobId: job.id!, openId: job.data.message.fromUserName };
    if (state === 'push') {
      await deps.pushQueue.add(JOBS.push, handover, { ...PUSH_JOB_OPTIONS, jobId: `push~${job.id}` });
    } else if (state === '') {
      // No attempt took it yet: make sure someone does once WeChat's last attempt must be over.
      const { firstAt } = await store.peek(job.id!);
      const delay = Math.max(0, passiveWindowEnd(config, firstAt || job.data.receivedAt) - Date.now());
      await deps.pushQueue.add(JOBS.settle, handover, { ...PUSH_JOB_OPTIONS, jobId: `settle~${job.id}`, delay });
    }
    log.info({ parts: parts.length, state }, 'answer ready');
    return { parts: parts.length, state };
  };
}

async function askForParts(
  deps: AnswerProcessorDeps,
  account: AccountConfig,
  job: Job<AnswerJobData>,
  log: Logger,
  signal?: AbortSignal,
): Promise<AnswerPart[]> {
  const tr = messagesFor(account);
  const { message } = job.data;
  const request = buildDifyRequest(message, tr);
  if (request.directAnswer) return [{ type: 'text', text: request.directAnswer }];
  const conversation = await deps.conversations.get(account.id, message.fromUserName);
  try {
    const answer = await deps.difyFor(account).ask({
      query: request.query,
      user: message.fromUserName,
      inputs: request.inputs,
      conversationId: conversation.id,
      signal,
      onConversationId: async (id) => {
        if (id !== conversation.id) await deps.conversations.save(account.id, message.fromUserName, conversation, id);
      },
    });
    log.info({ ms: answer.totalMs, firstEventMs: answer.firstEventMs, chars: answer.text.length }, 'dify answered');
    const shaped = shapeAnswer(answer.text, { difyOrigin: new URL(account.difyApiBaseUrl).origin });
    const text = shaped.text || tr('difyError');
    return splitText(text).map((t) => ({ type: 'text', text: t }));
  } catch (err) {
    const lastTry = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
    if (err instanceof AppError && err.retryable && !lastTry && !signal?.aborted) throw err;
    if (signal?.aborted) throw err;
    log.error({ err, code: (err as AppError).code }, 'dify failed; answering with an apology');
    const timedOut = err instanceof AppError && err.code === 'dify_timeout';
    return [{ type: 'text', text: timedOut ? tr('difyTimeout') : tr('difyError') }];
  }
}
