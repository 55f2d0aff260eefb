import { UnrecoverableError, type Job } from 'bullmq';
import {
  AppError,
  messagesFor,
  parkJob,
  withBindings,
  type AccountConfig,
  type AnswerPart,
  type Config,
  type DeliveryStore,
  type Logger,
  type Metrics,
  type PushJobData,
} from '@wxdify/core';
import type { PushLine } from '../push-line.js';
import { WeChatApiError, WeChatHttpError, type WeChatApi } from '../wechat-api.js';

/** errcodes of the customer-service API that decide what happens next (never the message text). */
const ERR_OUTSIDE_48H = 45015;
const ERR_PUSH_QUOTA = 45047;
const ERR_NO_PERMISSION = 48001;

export interface PushProcessorDeps {
  config: Config;
  metrics: Metrics;
  logger: Logger;
  store: DeliveryStore;
  pushLine: PushLine;
  wechatFor: (account: AccountConfig) => WeChatApi;
}

type PushOutcome = 'done' | 'quota' | 'dropped' | 'no-permission';

interface PushContext {
  deps: PushProcessorDeps;
  account: AccountConfig;
  data: PushJobData;
  log: Logger;
}

/**
 * Pushes the undelivered parts of an answer with the customer-service API, in order, in its
 * follower's push line (answers in order, one at a time). Each part is claimed in Redis before it
 * is sent, by the same script the follower's `1` uses, so no part goes out twice: at most once.
 * A claim is given back only when WeChat surely did not get the part. WeChat allows 5 pushes per
 * follower message: what does not fit waits for the follower's next `1`, and the last part that
 * fits says so. At shutdown the job stops between parts and goes back to the queue.
 */
export function createPushProcessor(deps: PushProcessorDeps) {
  return async (job: Job<PushJobData>, token?: string, signal?: AbortSignal): Promise<{ pushed: number; outcome: PushOutcome }> => {
    const account = accountOf(deps.config, job.data.account);
    const { answerJobId, openId } = job.data;
    const { answer, next, firstAt } = await deps.store.peek(answerJobId);
    if (!answer) throw new UnrecoverableError(`no answer stored for ${answerJobId}`);
    const order = firstAt * 1000 + Math.min(next, 999);
    return deps.pushLine.run(job, token, { account: account.id, openId, order }, async (isHead) => {
      const ctx: PushContext = { deps, account, data: job.data, log: withBindings(deps.logger, { jobId: answerJobId, account: account.id }) };
      let pushed = 0;
      for (;;) {
        if (signal?.aborted || !isHead()) {
          // Shutting down (or our turn was lost): hand the job back; the parts sent so far stay claimed.
          ctx.log.warn({ pushed }, 'push interrupted between parts; job handed back to the queue');
          return parkJob(job, token, 0);
        }
        const outcome = await pushNext(ctx, firstAt);
        if (outcome === 'none') break;
        if (outcome !== 'done' && outcome !== 'last') return stop(ctx, outcome, pushed);
        pushed++;
        if (outcome === 'last') break;
      }
      await deps.store.clearPending(account.id, openId, answerJobId);
      ctx.log.info({ pushed }, 'answer pushed');
      return { pushed, outcome: 'done' as const };
    });
  };
}

/**
 * Claims and sends the next part: 'last' when it was the answer's last part (nothing more to claim
 * or spend the allowance on), 'none' when every part was already out.
 */
async function pushNext({ deps, account, data, log }: PushContext, firstAt: number): Promise<PushOutcome | 'none' | 'last'> {
  const { store } = deps;
  const api = deps.wechatFor(account);
  const quota = await store.usePushQuota(account.id, data.openId);
  if (!quota.ok) return 'quota';
  const claim = await store.claimPart(data.answerJobId);
  if (!claim) {
    await store.giveBackPush(account.id, data.openId);
    return 'none';
  }
  const part = withNotice(account, claim.part, claim.remaining, quota.left);
  try {
    if (part.type === 'text') await api.sendText(data.openId, part.text);
    else await api.sendImage(data.openId, part.mediaId);
  } catch (err) {
    if (!surelyNotSent(err)) {
      // The request may have reached WeChat (timeout, connection lost after sending): counting it
      // as sent risks a missing part, sending it again a duplicate; we keep at most once.
      log.warn({ index: claim.index, err: (err as Error).message }, 'push outcome unknown; part counted as sent');
      return claim.remaining === 0 ? 'last' : 'done';
    }
    const errcode = err instanceof WeChatApiError ? err.errcode : undefined;
    if (!(await store.giveBackPart(data.answerJobId, claim.index))) {
      log.warn({ index: claim.index, errcode }, 'push failed after a later part was handed out; this part is skipped');
    }
    // 45047 means the allowance is spent: that one is not given back (stop() marks it spent).
    if (errcode !== ERR_PUSH_QUOTA) await store.giveBackPush(account.id, data.openId);
    if (errcode === ERR_PUSH_QUOTA) return 'quota';
    if (errcode === ERR_OUTSIDE_48H) return 'dropped';
    if (errcode === ERR_NO_PERMISSION) return 'no-permission';
    throw err;
  }
  if (claim.index === 0) {
    // The whole answer went by push: this is when it reached the follower.
    deps.metrics.answersDelivered.inc({ account: account.id, path: 'pushed' });
    if (firstAt) deps.metrics.answerLatency.observe({ path: 'pushed' }, (Date.now() - firstAt) / 1000);
  }
  return claim.remaining === 0 ? 'last' : 'done';
}

/**
 * WeChat answered with an errcode, or our send never left (the access token could not be had, or
 * the connection could not be made): the part did not reach the follower. Anything else that went
 * wrong with the send itself (a timeout, a connection lost after sending, an HTTP error from a
 * proxy) may have delivered it.
 */
function surelyNotSent(err: unknown): boolean {
  if (err instanceof WeChatHttpError) return !err.mayHaveArrived;
  return err instanceof AppError;
}

async function stop({ deps, account, data, log }: PushContext, outcome: PushOutcome, pushed: number) {
  if (outcome === 'quota') {
    // The rest waits for the follower's next message or `1`.
    await deps.store.setPushQuota(account.id, data.openId, 0);
    await deps.store.setPending(account.id, data.openId, data.answerJobId);
    log.info({ pushed }, 'push allowance used up; the rest waits for the follower');
  } else if (outcome === 'dropped') {
    log.warn({ pushed }, 'follower outside the 48 h window (45015); answer dropped');
  } else {
    await deps.store.setPending(account.id, data.openId, data.answerJobId);
    if (await deps.store.blockCustomService(account.id)) {
      log.error('WeChat refused customer-service messages (48001): switching this account to the waiting mode');
    }
  }
  return { pushed, outcome };
}

/** The last part that fits in the allowance tells the follower that more waits for `1`. */
function withNotice(account: AccountConfig, part: AnswerPart, remaining: number, quotaLeft: number): AnswerPart {
  if (quotaLeft > 0 || remaining === 0 || part.type !== 'text') return part;
  return { type: 'text', text: `${part.text}\n\n${messagesFor(account)('moreParts', { count: remaining })}` };
}

function accountOf(config: Config, id: string): AccountConfig {
  const account = config.accounts.get(id);
  if (!account) throw new UnrecoverableError(`unknown account ${id}`);
  return account;
}
