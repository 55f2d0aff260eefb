// Where a fast-path message's time goes, hop by hop, from a run kept with BENCH_KEEP=1:
//   node --import tsx scripts/bench/hops.ts <the kept dir>
// It starts redis-server on the run's AOF (in that dir) and reads, for each queue message of the
// fast rounds whose job BullMQ still keeps (its last 10,000), the timestamps the run left behind:
// the first arrival (delivery hash `first`), the job's add and start (BullMQ's `timestamp` and
// `processedOn`), the answer's `readyAt` (just before the worker stores it), and the ingress's
// "answered" log line (the reply; only first attempts count). Every one is a Date.now() reading
// of the ingress or the worker, on the same host: ms, comparable.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { QUEUES } from '@wxdify/core';
import { fmt, percentile, table } from './report.js';
import { startRedis, stopChild } from './processes.js';

/** The hops, each from one timestamp to the next. */
const HOPS = [
  ['arrival → job added', 'arrived', 'added'],
  ['job added → worker starts it', 'added', 'started'],
  ['worker starts → answer ready (Dify call)', 'started', 'ready'],
  ['answer ready → reply sent', 'ready', 'replied'],
  ['arrival → reply sent (all)', 'arrived', 'replied'],
] as const;
type Stamp = (typeof HOPS)[number][1 | 2];

/** Delivery hashes of the fast rounds' messages (scripts/bench.ts names their followers `oQueue<round>-<n>`). */
const FAST_QUEUE_MESSAGES = '*:msg:m~default~oQueue*';

export async function hops(dir: string): Promise<string> {
  const replies = replyTimes(readFileSync(join(dir, 'ingress.log'), 'utf8'));
  const redis = await startRedis(dir);
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1 });
  try {
    const messages: Array<Record<Stamp, number>> = [];
    for await (const keys of client.scanStream({ match: FAST_QUEUE_MESSAGES, count: 1000 }) as AsyncIterable<string[]>) {
      await Promise.all(keys.map(async (key) => {
        const at = key.indexOf(':msg:');
        const jobId = key.slice(at + 5);
        const [[first, ans], [added, started]] = await Promise.all([
          client.hmget(key, 'first', 'ans'),
          client.hmget(`${key.slice(0, at)}:${QUEUES.answer}:${jobId}`, 'timestamp', 'processedOn'),
        ]);
        const replied = first ? replyOf(replies, jobId.slice(jobId.lastIndexOf('~') + 1), Number(first)) : undefined;
        if (!first || !ans || !added || !started || replied === undefined) return;
        const ready = (JSON.parse(ans) as { readyAt: number }).readyAt;
        messages.push({ arrived: Number(first), added: Number(added), started: Number(started), ready, replied });
      }));
    }
    if (messages.length === 0) return `no fast-path queue message with all its timestamps in ${dir}`;
    const rows = HOPS.map(([label, from, to]) => {
      const ms = messages.map((m) => m[to] - m[from]);
      return [label, fmt(ms.reduce((a, b) => a + b, 0) / ms.length), fmt(percentile(ms, 50)), fmt(percentile(ms, 99))];
    });
    return `${messages.length} messages\n\n${table(['hop', 'mean (ms)', 'p50 (ms)', 'p99 (ms)'], rows)}`;
  } finally {
    client.disconnect();
    await stopChild(redis.child);
  }
}

/**
 * When the ingress replied to first attempts (ms), by MsgId and arrival, from its "answered" log
 * lines. The load generator's MsgIds restart with each round, and the line does not name the
 * follower: its arrival (the line's time less its `ms`) tells the rounds apart.
 */
function replyTimes(log: string): Map<string, number> {
  const times = new Map<string, number>();
  for (const line of log.split('\n')) {
    if (!line.includes('"answered"')) continue;
    const entry = JSON.parse(line) as { msg?: string; msgId?: string; attempt?: number; time?: string; ms?: number };
    if (entry.msg !== 'answered' || entry.attempt !== 1 || !entry.msgId || !entry.time || entry.ms === undefined) continue;
    const at = Date.parse(entry.time);
    times.set(`${entry.msgId}@${at - entry.ms}`, at);
  }
  return times;
}

/** The reply to the message `msgId` that arrived at `arrived` (the log line's clock reading may be 1-2 ms later). */
function replyOf(replies: Map<string, number>, msgId: string, arrived: number): number | undefined {
  for (const d of [0, -1, 1, -2, 2]) {
    const at = replies.get(`${msgId}@${arrived + d}`);
    if (at !== undefined) return at;
  }
  return undefined;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: node --import tsx scripts/bench/hops.ts <dir kept by BENCH_KEEP=1>');
    process.exit(2);
  }
  console.log(await hops(dir));
}
