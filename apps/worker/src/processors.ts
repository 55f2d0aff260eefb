import type { Job } from 'bullmq';
import { JOBS, QUEUES, type QueueName } from '@wxdify/core';

type Processor = (job: Job, token?: string, signal?: AbortSignal) => Promise<unknown>;

/** Job name → processor for each queue; the compiler checks every declared job has one. */
export type ProcessorMap = {
  [QUEUES.answer]: { [JOBS.answer]: Processor };
  [QUEUES.push]: { [JOBS.push]: Processor };
};

/** Routes a job to its processor by name; an unknown name is a bug, not a retry. */
export function dispatch(map: Record<string, Processor>, queue: QueueName): Processor {
  return async (job, token, signal) => {
    const processor = map[job.name];
    if (!processor) throw new Error(`no processor for job "${job.name}" in queue "${queue}"`);
    return processor(job, token, signal);
  };
}
