import { UnrecoverableError, type Job } from 'bullmq';
import type { AccountConfig, Config, DeliveryStore, Logger, PushJobData, SettleJobData } from '@wxdify/core';
import type { WeChatApi } from '../wechat-api.js';

export interface PushProcessorDeps {
  config: Config;
  logger: Logger;
  store: DeliveryStore;
  wechatFor: (account: AccountConfig) => WeChatApi;
}

/**
 * Pushes the undelivered parts of an answer with the customer-service API, in order. The index of
 * the next part is saved after each send, so a retried job never sends a part twice.
 */
export function createPushProcessor(deps: PushProcessorDeps) {
  return async (job: Job<PushJobData>): Promise<{ pushed: number }> => {
    const account = accountOf(deps.config, job.data.account);
    const { answerJobId, openId } = job.data;
    const { answer, next } = await deps.store.peek(answerJobId);
    if (!answer) throw new UnrecoverableError(`no answer stored for ${answerJobId}`);
    const api = deps.wechatFor(account);
    let pushed = 0;
    for (let i = next; i < answer.parts.length; i++) {
      const part = answer.parts[i]!;
      if (part.type === 'text') await api.sendText(openId, part.text);
      else await api.sendImage(openId, part.mediaId);
      await deps.store.markDelivered(answerJobId, i + 1);
      pushed++;
    }
    deps.logger.info({ jobId: answerJobId, pushed }, 'answer pushed');
    return { pushed };
  };
}

/**
 * Runs once WeChat's last attempt must be over: an answer no attempt took (attempts lost on the
 * way, or an ingress that died mid-wait) is pushed, or left for the follower's `1`.
 */
export function createSettleProcessor(deps: PushProcessorDeps, push: (job: Job<PushJobData>) => Promise<unknown>) {
  return async (job: Job<SettleJobData>): Promise<{ state: string }> => {
    const account = accountOf(deps.config, job.data.account);
    const handoff = account.enableCustomMessage ? 'push' : 'wait';
    const result = await deps.store.settle(job.data.answerJobId, 'handoff', handoff);
    if (result.won && result.state === 'push') await push(job);
    if (result.won) deps.logger.info({ jobId: job.data.answerJobId, state: result.state }, 'answer handed over late');
    return { state: result.state };
  };
}

function accountOf(config: Config, id: string): AccountConfig {
  const account = config.accounts.get(id);
  if (!account) throw new UnrecoverableError(`unknown account ${id}`);
  return account;
}
