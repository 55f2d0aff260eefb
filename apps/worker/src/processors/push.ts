import { UnrecoverableError, type Job } from 'bullmq';
import {
  messagesFor,
  type AccountConfig,
  type AnswerPart,
  type Config,
  type DeliveryStore,
  type Logger,
  type Metrics,
  type PushJobData,
} from '@wxdify/core';
import type { FollowerLock } from '../follower-lock.js';
import { WeChatApiError, type WeChatApi } from '../wechat-api.js';

/** errcodes of the customer-service API that decide what happens next (never the message text). */
const ERR_OUTSIDE_48H = 45015;
const ERR_PUSH_QUOTA = 45047;
const ERR_NO_PERMISSION = 48001;

export interface PushProcessorDeps {
  config: Config;
  metrics: Metrics;
  logger: Logger;
  store: DeliveryStore;
  lock: FollowerLock;
  wechatFor: (account: AccountConfig) => WeChatApi;
}

type PushOutcome = 'done' | 'quota' | 'dropped' | 'no-permission';

/**
 * Pushes the undelivered parts of an answer with the customer-service API, in order, one
 * follower at a time. The index of the next part is saved after each send, so a retried job
 * never sends a part twice. WeChat allows 5 pushes per follower message: what does not fit
 * waits for the follower's next `1`, and the last part that fits says so.
 */
export function createPushProcessor(deps: PushProcessorDeps) {
  return async (job: Job<PushJobData>, token?: string): Promise<{ pushed: number; outcome: PushOutcome }> => {
    const account = accountOf(deps.config, job.data.account);
    const { answerJobId, openId } = job.data;
    return deps.lock.run(job, token, account.id, openId, async () => {
      const { answer, next, firstAt } = await deps.store.peek(answerJobId);
      if (!answer) throw new UnrecoverableError(`no answer stored for ${answerJobId}`);
      const log = deps.logger.child({ jobId: answerJobId, account: account.id });
      let pushed = 0;
      for (let i = next; i < answer.parts.length; i++) {
        const quota = await deps.store.usePushQuota(account.id, openId);
        const outcome = quota.ok ? await send(deps, account, openId, withNotice(account, answer.parts, i, quota.left)) : 'quota';
        if (outcome !== 'done') return stop(deps, account, job.data, outcome, pushed, log);
        await deps.store.markDelivered(answerJobId, i + 1);
        if (i === 0) {
          // The whole answer went by push: this is when it reached the follower.
          deps.metrics.answersDelivered.inc({ account: account.id, path: 'pushed' });
          if (firstAt) deps.metrics.answerLatency.observe({ path: 'pushed' }, (Date.now() - firstAt) / 1000);
        }
        pushed++;
      }
      await deps.store.clearPending(account.id, openId, answerJobId);
      log.info({ pushed }, 'answer pushed');
      return { pushed, outcome: 'done' as const };
    });
  };
}

async function send(deps: PushProcessorDeps, account: AccountConfig, openId: string, part: AnswerPart): Promise<PushOutcome> {
  const api = deps.wechatFor(account);
  try {
    if (part.type === 'text') await api.sendText(openId, part.text);
    else await api.sendImage(openId, part.mediaId);
    return 'done';
  } catch (err) {
    if (!(err instanceof WeChatApiError)) throw err;
    if (err.errcode === ERR_PUSH_QUOTA) return 'quota';
    if (err.errcode === ERR_OUTSIDE_48H) return 'dropped';
    if (err.errcode === ERR_NO_PERMISSION) return 'no-permission';
    throw err;
  }
}

async function stop(deps: PushProcessorDeps, account: AccountConfig, data: PushJobData, outcome: PushOutcome, pushed: number, log: Logger) {
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
function withNotice(account: AccountConfig, parts: AnswerPart[], index: number, quotaLeft: number): AnswerPart {
  const part = parts[index]!;
  const remaining = parts.length - index - 1;
  if (quotaLeft > 0 || remaining === 0 || part.type !== 'text') return part;
  return { type: 'text', text: `${part.text}\n\n${messagesFor(account)('moreParts', { count: remaining })}` };
}

function accountOf(config: Config, id: string): AccountConfig {
  const account = config.accounts.get(id);
  if (!account) throw new UnrecoverableError(`unknown account ${id}`);
  return account;
}
