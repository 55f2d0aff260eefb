import type { Queue } from 'bullmq';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Where an answer reached the follower (label `path` of wxdify_answers_delivered_total). */
export type DeliveryPath = 'passive_1' | 'passive_2' | 'passive_3' | 'pushed' | 'fetched';

/** Shared state a process reads from Redis when scraped, so every replica reports the same. */
export interface MetricSources {
  /** Each account's 48001 switch (true: customer-service messages refused, waiting mode in use). */
  customServiceBlocked?: () => Promise<ReadonlyMap<string, boolean>>;
}

/**
 * The Prometheus metrics of one process: Node's defaults plus ours. Label values are bounded
 * (account ids, message types, paths, error codes), never OpenIDs or message ids.
 * https://prometheus.io/docs/practices/naming
 */
export function createMetrics(component: 'ingress' | 'worker', sources: MetricSources = {}) {
  const registry = new Registry();
  registry.setDefaultLabels({ component });
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    messagesReceived: new Counter({
      name: 'wxdify_messages_received_total',
      help: 'Follower messages and events received (first attempt only), by account and type',
      labelNames: ['account', 'type'] as const,
      registers,
    }),
    attempts: new Counter({
      name: 'wxdify_wechat_attempts_total',
      help: 'WeChat callback attempts, by attempt number (1-3) and outcome (reply, success, retry)',
      labelNames: ['attempt', 'outcome'] as const,
      registers,
    }),
    answersDelivered: new Counter({
      name: 'wxdify_answers_delivered_total',
      help: 'Answers that reached the follower, by path: passive on attempt N, pushed, fetched with 1',
      labelNames: ['account', 'path'] as const,
      registers,
    }),
    answerLatency: new Histogram({
      name: 'wxdify_answer_latency_seconds',
      help: "Time from a message's first arrival to its answer reaching the follower",
      labelNames: ['path'] as const,
      buckets: [0.25, 0.5, 1, 2, 3, 4.5, 7, 10, 15, 20, 30, 60, 120, 300],
      registers,
    }),
    difyFirstEvent: new Histogram({
      name: 'wxdify_dify_first_event_seconds',
      help: 'Time from the Dify request to its first data event',
      buckets: [0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30],
      registers,
    }),
    difyDuration: new Histogram({
      name: 'wxdify_dify_duration_seconds',
      help: 'Time from the Dify request to the whole answer',
      buckets: [0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 240],
      registers,
    }),
    difyErrors: new Counter({
      name: 'wxdify_dify_errors_total',
      help: 'Dify failures by error code',
      labelNames: ['code'] as const,
      registers,
    }),
    wechatApiErrors: new Counter({
      name: 'wxdify_wechat_api_errors_total',
      help: 'WeChat API calls that returned a non-zero errcode, by errcode',
      labelNames: ['errcode'] as const,
      registers,
    }),
    customServiceBlocked: new Gauge({
      name: 'wxdify_custom_service_blocked',
      help: 'Set to 1 when WeChat refused customer-service messages (48001) and the account fell back to the waiting mode',
      labelNames: ['account'] as const,
      registers,
      // Read at scrape time: the switch lives in Redis, not in the memory of the worker that hit 48001.
      async collect() {
        const states = await sources.customServiceBlocked?.().catch(() => undefined);
        for (const [account, blocked] of states ?? []) this.set({ account }, blocked ? 1 : 0);
      },
    }),
    queueJobs: new Gauge({
      name: 'wxdify_queue_jobs',
      help: 'Jobs per queue and state (global: every replica reports the same numbers; aggregate with max)',
      labelNames: ['queue', 'state'] as const,
      registers,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

const QUEUE_STATES = ['waiting', 'active', 'delayed', 'failed', 'prioritized'] as const;

/** Reads the queues' job counts into `wxdify_queue_jobs`, then renders the registry (Prometheus text). */
export async function renderMetrics(metrics: Metrics, queues: Queue[]): Promise<string> {
  await Promise.all(
    queues.map(async (queue) => {
      const counts = await queue.getJobCounts(...QUEUE_STATES).catch(() => undefined);
      for (const state of QUEUE_STATES) {
        if (counts) metrics.queueJobs.set({ queue: queue.name, state }, counts[state] ?? 0);
      }
    }),
  );
  return metrics.registry.metrics();
}
