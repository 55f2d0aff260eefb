import type { Queue } from 'bullmq';
import { enqueuePush, throttledErrorLog, type Config, type DeliveryStore, type Logger, type PushJobData } from '@wxdify/core';

/** How often each worker looks for answers whose hand-over is due. */
const SWEEP_MS = 500;

/**
 * Hands over answers that no WeChat attempt took once WeChat's last attempt must be over
 * (attempts lost on the way, or an ingress that died mid-wait): pushed in customer-service
 * mode, left for the follower's `1` otherwise. Every worker sweeps; the atomic settle makes
 * exactly one of them the one who hands it over.
 */
export function startDueSweeper(deps: { config: Config; store: DeliveryStore; pushQueue: Queue<PushJobData>; logger: Logger }) {
  const onError = throttledErrorLog(deps.logger, 'due sweep failed');
  let running: Promise<void> | undefined;
  const timer = setInterval(() => {
    running ??= sweep(deps)
      .catch(onError)
      .finally(() => (running = undefined));
  }, SWEEP_MS);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}

async function sweep({ config, store, pushQueue, logger }: Parameters<typeof startDueSweeper>[0]): Promise<void> {
  for (const { jobId, account: accountId, openId } of await store.dueAnswers()) {
    const account = config.accounts.get(accountId);
    if (!account || !openId) {
      await store.dropDue(jobId);
      continue;
    }
    const pushes = account.enableCustomMessage && !(await store.customServiceBlocked(account.id));
    // A hand-over to `wait` enters the follower's pending set in the same atomic step.
    const result = await store.settle(jobId, 'handoff', pushes ? 'push' : 'wait', { follower: { account: account.id, openId } });
    if (result.won) logger.info({ jobId, state: result.state }, 'answer handed over after the last attempt');
    if (result.state === 'push' && result.answer) {
      // The due entry stayed (re-scored) until now: whoever handed it over may have died before
      // enqueuing the push. The push job id is idempotent, so enqueuing again is harmless.
      await enqueuePush(pushQueue, { account: account.id, answerJobId: jobId, openId }, 0);
    }
    await store.dropDue(jobId);
  }
}
