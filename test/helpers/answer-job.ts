import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { QUEUES } from '../../packages/core/src/index.js';

/** What BullMQ holds for one answer job: its state and how many attempts it has used. */
export interface AnswerJobState {
  state: string;
  attemptsMade: number;
  failedReason: string | undefined;
}

/**
 * Reads an answer job straight from Redis (a Queue of its own, closed again), e.g. to see that a
 * job handed back at shutdown kept all its attempts.
 */
export async function readAnswerJob(redisUrl: string, prefix: string, jobId: string): Promise<AnswerJobState | undefined> {
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(QUEUES.answer, { connection, prefix });
  try {
    const job = await queue.getJob(jobId);
    if (!job) return undefined;
    return { state: await job.getState(), attemptsMade: job.attemptsMade, failedReason: job.failedReason || undefined };
  } finally {
    await queue.close();
    connection.disconnect();
  }
}
