import { DelayedError, UnrecoverableError, type Job, type Queue } from 'bullmq';
import {
  JOBS,
  enqueuePush,
  PUSH_JOB_OPTIONS,
  type AccountConfig,
  type AnswerJobData,
  type AnswerJobResult,
  type Config,
  type DeliveryStore,
  type Logger,
  type PushJobData,
  type SettleJobData,
} from '@wxdify/core';
import { askDify, type AskDifyDeps } from '../ask-dify.js';
import type { UserTurns } from '../user-turn.js';
import { startTyping } from '../typing.js';
import type { WeChatApi } from '../wechat-api.js';

export interface AnswerProcessorDeps extends AskDifyDeps {
  config: Config;
  logger: Logger;
  store: DeliveryStore;
  turns: UserTurns;
  pushQueue: Queue<PushJobData>;
  wechatFor: (account: AccountConfig) => WeChatApi;
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

    // In customer-service mode the follower sees "typing…" while Dify works.
    const typing = account.enableCustomMessage ? startTyping(deps.wechatFor(account), job.data.message.fromUserName, log) : undefined;
    const parts = await askDify(deps, account, job, log, signal)
      .catch(async (err: unknown) => {
        if (!signal?.aborted) throw err;
        // The worker is shutting down: hand the job back untouched (no attempt used) for another worker.
        log.warn('shutting down mid-answer; job handed back to the queue');
        await job.moveToDelayed(Date.now(), token);
        throw new DelayedError();
      })
      .finally(() => typing?.stop());
    const state = await store.saveAnswer(job.id!, { parts, readyAt: Date.now() });
    await deps.turns.release(job);
    const handover = { account: account.id, answerJobId: job.id!, openId: job.data.message.fromUserName };
    if (state === 'push') {
      await enqueuePush(deps.pushQueue, handover, 0);
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
