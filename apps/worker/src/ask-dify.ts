import type { Job } from 'bullmq';
import {
  AppError,
  messagesFor,
  shapeAnswer,
  splitText,
  type AccountConfig,
  type AnswerJobData,
  type AnswerPart,
  type ConversationStore,
  type DifyClient,
  type Logger,
} from '@wxdify/core';
import { buildDifyRequest } from './dify-request.js';

export interface AskDifyDeps {
  conversations: ConversationStore;
  difyFor: (account: AccountConfig) => DifyClient;
}

/**
 * Asks Dify for the answer to one message and shapes it into WeChat parts. The conversation id
 * is saved as soon as Dify sends it. Retryable failures are thrown for BullMQ to retry (while
 * attempts remain); anything else becomes a short apology in the follower's language.
 */
export async function askDify(
  deps: AskDifyDeps,
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
