// The fakes' process: the test suite's fake Dify (real HTTP, real SSE) and fake WeChat API, in a
// process of their own so that neither steals the load generator's event loop. Driven over IPC.
import { performance } from 'node:perf_hooks';
import { startFakeDify, type FakeStream } from '../../test/fakes/fake-dify.js';
import { FakeWeChat } from '../../test/fakes/fake-wechat.js';

/** Messages from the bench to this process. */
export type FakesRequest =
  | { type: 'slow'; id: number; count: number; delayMs: number }
  | { type: 'report'; id: number };

/** Messages from this process to the bench. */
export type FakesMessage =
  | { type: 'ready'; difyBaseUrl: string; difyApiKey: string; wechatUrl: string; answerChars: number }
  | { type: 'ok'; id: number }
  | { type: 'report'; id: number; finishes: Record<string, number>; pushes: Array<{ touser: string; at: number; text: string }>; peakStreams: number };

/** The answer of every question: about the size of a short chatbot answer, streamed in LLM-sized chunks. */
export const answerOf = (query: string) =>
  `Echo: ${query}. 这是一个基准测试的回答，长度和一个简短的聊天回答差不多。The quick brown fox jumps over the lazy dog, twice over.`;
const CHUNK_CHARS = 8;
/** Dify pings every 10 s; 1 s here so that a 6 s answer has keep-alives to skip. */
const PING_INTERVAL_MS = 1000;

const now = () => performance.timeOrigin + performance.now();
const send = (msg: FakesMessage) => process.send?.(msg);

const dify = await startFakeDify({ mode: 'chat', answer: answerOf, chunkSize: CHUNK_CHARS, pingIntervalMs: PING_INTERVAL_MS, recordRequests: false });
const wechat = await new FakeWeChat().start();
/** When each slow answer's last event was written, by follower (Dify's `user`). */
const finishes: Record<string, number> = {};
let peakStreams = 0;
let sampler: NodeJS.Timeout | undefined;

/** A chat answer that pings for `delayMs`, then streams and ends; records the end's time. */
const slowAnswer = (delayMs: number) => async (s: FakeStream) => {
  await s.sleep(delayMs);
  const text = answerOf(s.query);
  for (let i = 0; i < text.length && !s.closed; i += CHUNK_CHARS) {
    await s.emit('message', { id: s.messageId, answer: text.slice(i, i + CHUNK_CHARS), from_variable_selector: null });
  }
  await s.emit('message_end', { id: s.messageId, metadata: { usage: { total_tokens: 42 } }, files: null });
  if (!s.closed) finishes[s.user] = now();
};

process.on('message', (msg: FakesRequest) => {
  if (msg.type === 'slow') {
    for (let i = 0; i < msg.count; i++) dify.script(slowAnswer(msg.delayMs));
    peakStreams = 0;
    sampler = setInterval(() => { peakStreams = Math.max(peakStreams, dify.runningTaskIds().length); }, 20);
    send({ type: 'ok', id: msg.id });
  } else if (msg.type === 'report') {
    clearInterval(sampler);
    const pushes = wechat.pushed.map((p) => ({ touser: p.touser, at: p.at, text: p.text?.content ?? '' }));
    send({ type: 'report', id: msg.id, finishes, pushes, peakStreams });
  }
});
process.on('disconnect', () => void Promise.all([dify.close(), wechat.close()]).finally(() => process.exit(0)));
process.on('SIGTERM', () => void Promise.all([dify.close(), wechat.close()]).finally(() => process.exit(0)));

send({ type: 'ready', difyBaseUrl: dify.baseUrl, difyApiKey: dify.apiKey, wechatUrl: wechat.url, answerChars: answerOf('x').length });
