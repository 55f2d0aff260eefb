import { UnrecoverableError, type Job, type Queue } from 'bullmq';
import {
  enqueuePush,
  parkJob,
  withBindings,
  type AccountConfig,
  type AnswerJobData,
  type AnswerJobResult,
  type Config,
  type DeliveryState,
  type DeliveryStore,
  type Logger,
  type PushJobData,
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
export function passiveWindowMs(config: Config): number {
  return 3 * config.wechatTimeoutMs + 1500;
}

/**
 * Answers one follower message: waits for the follower's turn, asks Dify (saving the conversation
 * id as soon as it is known), shapes the answer into WeChat parts, stores it (which wakes the
 * attempt waiting for it and ends the turn), and pushes it when WeChat's attempts already gave up.
 * An answer nobody took yet is handed over by the due sweep once WeChat's window is over.
 */
export function createAnswerProcessor(deps: AnswerProcessorDeps) {
  return async (job: Job<AnswerJobData>, token?: string, signal?: AbortSignal): Promise<AnswerJobResult> => {
    const { config, store } = deps;
    const account = config.accounts.get(job.data.account);
    if (!account) throw new UnrecoverableError(`unknown account ${job.data.account}`);
    const openId = job.data.message.fromUserName;
    const log = withBindings(deps.logger, { jobId: job.id, account: account.id, msgId: job.data.message.msgId });
    // A rerun of a job that already stored its answer (it stalled, or a step after saving failed):
    // Dify is not asked again and the stored answer, perhaps half delivered, is kept; only the
    // hand-over steps are done again (each is idempotent). Only a job that ran before can have
    // stored one, so its first run skips this read (one Redis round trip per message).
    const stored = ranBefore(job) ? await store.peek(job.id!) : undefined;
    if (stored?.answer) {
      log.warn({ state: stored.state }, 'answer already stored; redoing the hand-over only');
      await handOver(deps, job, account, stored.state, await store.lineHead(account.id, openId));
      return { parts: stored.answer.parts.length, state: stored.state };
    }
    // A message that headed its follower's line when it was enqueued still heads it (nothing goes
    // before it), and its job carries the conversation: no round trip. Otherwise the follower's
    // conversation is read in the same round trip as the turn check. A rerun checks again.
    const conversation = job.data.headOfLine && !ranBefore(job)
      ? job.data.headOfLine
      : await deps.turns.acquire(job, token, () => deps.conversations.get(account.id, openId));

    // In customer-service mode the follower sees "typing…" while Dify works (not while WeChat refuses it: 48001).
    const typing = account.enableCustomMessage
      ? startTyping(deps.wechatFor(account), openId, log, { blocked: () => store.customServiceBlocked(account.id) })
      : undefined;
    const parts = await askDify(deps, account, job, log, conversation, signal)
      .catch(async (err: unknown) => {
        if (!signal?.aborted) throw err;
        // The worker is shutting down: hand the job back untouched (no attempt used) for another worker.
        log.warn('shutting down mid-answer; job handed back to the queue');
        return parkJob(job, token, 0);
      })
      .catch((err: unknown) => {
        typing?.stop({ cancel: true });
        throw err;
      });
    const { state, next } = await store.saveAnswer(job.id!, { parts, readyAt: Date.now() }, {
      account: account.id,
      openId,
      dueAfterMs: passiveWindowMs(config),
    });
    // A push ends "typing…" by itself; an answer that goes out passively or is left for `1` withdraws it.
    typing?.stop({ cancel: state !== 'push' });
    await handOver(deps, job, account, state, next);
    log.info({ parts: parts.length, state }, 'answer ready');
    return { parts: parts.length, state };
  };
}

/**
 * True unless this is the job's first run. BullMQ counts every start (`attemptsStarted`, also after
 * a stall, a retry, or a `moveToDelayed` such as a parked turn); failures and stalls are checked
 * too, in case an operator retried the job with its start count reset.
 */
function ranBefore(job: Job): boolean {
  return job.attemptsStarted > 1 || job.attemptsMade > 0 || job.stalledCounter > 0;
}

/** After the answer is stored: wakes the follower's next job, and pushes the answer when WeChat's attempts gave up. */
async function handOver(deps: AnswerProcessorDeps, job: Job<AnswerJobData>, account: AccountConfig, state: DeliveryState, next: string | undefined) {
  await deps.turns.wake(next);
  const openId = job.data.message.fromUserName;
  if (state === 'push') await enqueuePush(deps.pushQueue, { account: account.id, answerJobId: job.id!, openId }, 0);
}
