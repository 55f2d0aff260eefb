import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  createDifyClient,
  SseDecoder,
  type DifyClient,
  type DifyClientOptions,
  type SseItem,
} from '../packages/core/src/dify/index.js';
import { AppError } from '../packages/core/src/errors.js';
import { createLogger } from '../packages/core/src/logger.js';
import { startFakeDify, type FakeDify, type FakeDifyOptions } from './fakes/fake-dify.js';

const logger = createLogger({ level: 'silent' });
const USER = 'wx:wxapp:oUser1';
let fake: FakeDify | undefined;

afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

async function setup(
  fakeOpts: FakeDifyOptions = {},
  clientOpts: Partial<DifyClientOptions> = {},
): Promise<{ fake: FakeDify; dify: DifyClient }> {
  fake = await startFakeDify({ pingIntervalMs: 20, ...fakeOpts });
  const dify = createDifyClient({
    baseUrl: fake.baseUrl,
    apiKey: fake.apiKey,
    appType: 'chat',
    queryVariable: 'query',
    idleTimeoutMs: 1_000,
    totalTimeoutMs: 5_000,
    logger,
    retry: { attempts: 2, baseDelayMs: 10 },
    ...clientOpts,
  });
  return { fake, dify };
}

function ask(dify: DifyClient, query: string, more: Partial<Parameters<DifyClient['ask']>[0]> = {}) {
  return dify.ask({ query, user: USER, inputs: {}, ...more });
}

async function rejection(p: Promise<unknown>): Promise<AppError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(AppError);
  return err as AppError;
}

/** What the client's SSE decoder makes of `parts`, fed one chunk each (strings as UTF-8 bytes), then ended. */
function decode(parts: Array<string | Buffer>, maxBufferSize?: number): SseItem[] {
  const decoder = new SseDecoder({ log: logger, ...(maxBufferSize === undefined ? {} : { maxBufferSize }) });
  return [...parts.flatMap((p) => decoder.feed(typeof p === 'string' ? Buffer.from(p) : p)), ...decoder.end()];
}

describe('SseDecoder', () => {
  it('decodes CJK split inside a character, byte by byte', async () => {
    const wire = Buffer.from('data: {"event":"message","answer":"你好，世界🙂"}\n\n');
    const items = decode([...wire].map((b) => Buffer.from([b])));
    const events = items.filter((i) => i.type === 'event');
    expect(events).toEqual([{ type: 'event', event: { event: 'message', answer: '你好，世界🙂' } }]);
  });

  it('surfaces data-less pings separately from data events', async () => {
    const items = decode(['event: ping\n\n', 'data: {"event":"message","answer":"a"}\n\n', ': comment\n\n']);
    expect(items.map((i) => i.type)).toEqual(['ping', 'event', 'ping']);
  });

  it('accepts CRLF, id lines, spaced JSON and a last event without its blank line', async () => {
    const items = decode([
      'id: 1-0\r\ndata: {"event": "message", "answer": "\\u4f60"}\r\n\r\n',
      'data:{"event":"message_end"}',
    ]);
    expect(items.filter((i) => i.type === 'event')).toEqual([
      { type: 'event', event: { event: 'message', answer: '你' }, id: '1-0' },
      { type: 'event', event: { event: 'message_end' } },
    ]);
  });

  it('skips malformed JSON and a frame cut mid-line without failing', async () => {
    const items = decode(['data: {oops\n\n', 'data: {"event":"message","answer":"ok"}\n\n', 'data: {"event":"mess']);
    expect(items.filter((i) => i.type === 'event')).toEqual([{ type: 'event', event: { event: 'message', answer: 'ok' } }]);
  });

  it('fails on a frame larger than maxBufferSize', async () => {
    const big = `data: {"event":"message","answer":"${'x'.repeat(2_000)}"}\n\n`;
    let err: unknown;
    try {
      decode(big.match(/[^]{1,100}/g) ?? [], 1_000);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AppError);
    expect((err as AppError).code).toBe('dify_stream');
  });
});

describe('DifyClient app types', () => {
  it('streams a chat answer with the documented request shape', async () => {
    const { fake, dify } = await setup({ answer: 'Hello there, friend' });
    const answer = await ask(dify, 'hi');
    expect(answer).toMatchObject({ text: 'Hello there, friend', conversationReset: false, truncated: false, files: [] });
    expect(answer.conversationId).toMatch(/^[0-9a-f-]{36}$/);
    expect(answer.messageId).toMatch(/^[0-9a-f-]{36}$/);
    expect(answer.taskId).toMatch(/^[0-9a-f-]{36}$/);
    expect(answer.totalMs).toBeGreaterThanOrEqual(answer.firstEventMs ?? 0);
    const [req] = fake.runRequests();
    expect(req?.path).toBe('/v1/chat-messages');
    expect(req?.headers).toMatchObject({ accept: 'text/event-stream', 'accept-encoding': 'identity', authorization: `Bearer ${fake.apiKey}` });
    expect(req?.body).toEqual({ query: 'hi', inputs: {}, user: USER, response_mode: 'streaming', auto_generate_name: false });
  });

  it('sends conversation_id when continuing a conversation', async () => {
    const { fake, dify } = await setup();
    const conversationId = fake.createConversation(USER);
    const answer = await ask(dify, 'again', { conversationId });
    expect(answer.conversationId).toBe(conversationId);
    expect(fake.runRequests()[0]?.body).toMatchObject({ conversation_id: conversationId });
  });

  it('reads agent_message text of an agent app', async () => {
    const { dify } = await setup({ mode: 'agent-chat', answer: 'I will draw it. Here is your cat.' }, { appType: 'agent' });
    expect((await ask(dify, 'draw a cat')).text).toBe('I will draw it. Here is your cat.');
  });

  it('does not double the closing full message of a New Agent app', async () => {
    const { dify } = await setup({ mode: 'agent', answer: 'Once, not twice.' }, { appType: 'auto' });
    expect((await ask(dify, 'hi')).text).toBe('Once, not twice.');
  });

  it('reads a chatflow answer from message events between workflow events', async () => {
    const { dify } = await setup({ mode: 'advanced-chat', answer: 'Flowing answer' }, { appType: 'chatflow' });
    const answer = await ask(dify, 'hi');
    expect(answer).toMatchObject({ text: 'Flowing answer', truncated: false });
    expect(answer.conversationId).toBeDefined();
  });

  it('runs a workflow with the query in inputs and prefers the named output', async () => {
    const { fake, dify } = await setup(
      { mode: 'workflow', outputVariable: 'result', answer: 'Bonjour le monde' },
      { appType: 'workflow', queryVariable: 'text', outputVariable: 'result' },
    );
    const answer = await dify.ask({ query: 'translate', user: USER, inputs: { lang: 'fr' } });
    expect(answer.text).toBe('Bonjour le monde');
    expect(answer.conversationId).toBeUndefined();
    const [req] = fake.runRequests();
    expect(req?.path).toBe('/v1/workflows/run');
    expect(req?.body).toEqual({ inputs: { lang: 'fr', text: 'translate' }, user: USER, response_mode: 'streaming' });
  });

  /** A workflow run that streams `chunks` as text_chunk events and finishes with `outputs`. */
  function workflowRun(fake: FakeDify, chunks: string[], outputs: Record<string, unknown>): void {
    fake.script(async (s) => {
      for (const text of chunks) await s.emit('text_chunk', { data: { text, from_variable_selector: ['end', 'streamed'] } });
      await s.emit('workflow_finished', { data: { id: s.workflowRunId, status: 'succeeded', outputs } });
    });
  }

  it('takes text_chunk text over the outputs when DIFY_OUTPUT_VARIABLE is unset, else the first string output', async () => {
    const { fake, dify } = await setup({ mode: 'workflow' }, { appType: 'workflow' });
    workflowRun(fake, ['stream', 'ed'], { other: 'x', result: 'y' });
    workflowRun(fake, [], { n: 1, other: 'x', result: 'y' });
    expect((await ask(dify, 'a')).text).toBe('streamed');
    expect((await ask(dify, 'b')).text).toBe('x');
  });

  it('takes the configured output variable over text_chunk text, and text_chunk text when it is missing', async () => {
    const { fake, dify } = await setup({ mode: 'workflow' }, { appType: 'workflow', outputVariable: 'result' });
    workflowRun(fake, ['streamed'], { other: 'x', result: 'y' });
    workflowRun(fake, ['only ', 'chunks'], { other: 'x' });
    workflowRun(fake, [], { n: 1, other: 'x' });
    expect((await ask(dify, 'a')).text).toBe('y');
    expect((await ask(dify, 'b')).text).toBe('only chunks');
    expect((await ask(dify, 'c')).text).toBe('x');
  });

  it('puts the query in inputs and query for a completion app', async () => {
    const { fake, dify } = await setup({ mode: 'completion', answer: 'Completed.' }, { appType: 'completion' });
    const answer = await ask(dify, 'write');
    expect(answer).toMatchObject({ text: 'Completed.', conversationId: undefined });
    const [req] = fake.runRequests();
    expect(req?.path).toBe('/v1/completion-messages');
    expect(req?.body).toMatchObject({ query: 'write', inputs: { query: 'write' }, response_mode: 'streaming' });
  });

  it('asks GET /info once in auto mode, sharing one request between concurrent callers', async () => {
    const { fake, dify } = await setup({ mode: 'advanced-chat' }, { appType: 'auto' });
    const modes = await Promise.all([dify.getAppMode(), dify.getAppMode(), dify.getAppMode()]);
    expect(modes).toEqual(['advanced-chat', 'advanced-chat', 'advanced-chat']);
    await ask(dify, 'hi');
    expect(fake.requests.filter((r) => r.path === '/v1/info')).toHaveLength(1);
    expect(fake.runRequests()[0]?.path).toBe('/v1/chat-messages');
  });

  it('maps a route that does not match the app mode to dify_http 400', async () => {
    const { dify } = await setup({ mode: 'workflow' }, { appType: 'chat' });
    const err = await rejection(ask(dify, 'hi'));
    expect(err).toMatchObject({ code: 'dify_http', status: 400, retryable: false });
    expect(err.message).toContain('not_chat_app');
  });
});

describe('DifyClient parameters', () => {
  it('reports image support from file_upload.image.enabled and caches /parameters', async () => {
    const { fake, dify } = await setup({ acceptsImages: true });
    expect(await dify.acceptsImages()).toBe(true);
    expect(await dify.acceptsImages()).toBe(true);
    expect(fake.requests.filter((r) => r.path === '/v1/parameters')).toHaveLength(1);
  });

  it('reports image support from allowed_file_types of a chatflow', async () => {
    const { dify } = await setup({ mode: 'advanced-chat', acceptsImages: true });
    expect((await dify.getParameters()).file_upload?.image?.enabled).toBe(false);
    expect(await dify.acceptsImages()).toBe(true);
  });

  it.each(['chat', 'advanced-chat'] as const)('answers false for a %s app that takes images only as local_file uploads', async (mode) => {
    const { dify } = await setup({ mode, acceptsImages: true, imageTransferMethods: ['local_file'] });
    expect(await dify.acceptsImages()).toBe(false);
  });

  it('is refused by the fake, as by Dify, when a remote_url image is not an allowed method', async () => {
    const { dify } = await setup({ acceptsImages: true, imageTransferMethods: ['local_file'] });
    const err = await rejection(ask(dify, 'look', { files: [{ type: 'image', transfer_method: 'remote_url', url: 'http://mmbiz.qpic.cn/a/pic.jpg' }] }));
    expect(err).toMatchObject({ code: 'dify_http', status: 400, retryable: false });
    expect(err.message).toContain('File validation failed for file: pic.jpg');
  });

  it('answers false when images are off or /parameters fails', async () => {
    const { dify } = await setup({ acceptsImages: false });
    expect(await dify.acceptsImages()).toBe(false);
    const broken = createDifyClient({ baseUrl: fake!.baseUrl, apiKey: 'app-wrong', appType: 'chat', queryVariable: 'q', idleTimeoutMs: 500, totalTimeoutMs: 1_000, logger });
    expect(await broken.acceptsImages()).toBe(false);
    const err = await rejection(broken.getParameters());
    expect(err).toMatchObject({ code: 'dify_http', status: 401 });
    expect(err.message).toContain('Access token is invalid');
  });
});

describe('DifyClient stream handling', () => {
  it('keeps CJK intact when frames are split across TCP writes', async () => {
    const text = '你好，世界！这是一个测试。🙂 Ünïcödé';
    const { fake, dify } = await setup({ answer: text, chunkSize: 12, framing: { split: 7 } });
    expect((await ask(dify, 'hi')).text).toBe(text);
    expect(fake.runRequests()).toHaveLength(1);
  });

  it('reads CRLF framing, id lines and spaced ASCII-escaped JSON', async () => {
    const { dify } = await setup({ answer: '早上好 spaced', mode: 'advanced-chat' }, { appType: 'chatflow' });
    expect((await ask(dify, '[[scenario:normal+crlf+ids+spaced+redis]] hi')).text).toBe('早上好 spaced');
  });

  it('ignores unknown events', async () => {
    const { dify } = await setup({ answer: 'Still fine' });
    expect((await ask(dify, '[[scenario:unknown_event]] hi')).text).toBe('Still fine');
  });

  it('replaces the whole answer on message_replace', async () => {
    const { fake, dify } = await setup({ answer: 'something rude' });
    fake.enqueue({ name: 'moderation', replacement: 'Sorry, I cannot talk about that.' });
    expect((await ask(dify, 'hi')).text).toBe('Sorry, I cannot talk about that.');
  });

  it('takes text carried by message_file events and the file url', async () => {
    const { fake, dify } = await setup({ answer: 'Here is the cat you asked for.' });
    const answer = await ask(dify, '[[scenario:message_file]] draw');
    expect(answer.text).toBe('Here is the cat you asked for.');
    expect(answer.files).toHaveLength(1);
    expect(answer.files[0]).toMatchObject({ type: 'image', from: 'message_file' });
    expect(answer.files[0]?.url.startsWith(`${fake.origin}/files/tools/`)).toBe(true);
    const res = await fetch(answer.files[0]!.url);
    expect(res.headers.get('content-type')).toBe('image/png');
  });

  it('resolves a relative message_file url against the Dify origin', async () => {
    const { fake, dify } = await setup({ mode: 'agent-chat', answer: 'Drawn.' }, { appType: 'agent' });
    const answer = await ask(dify, '[[scenario:message_file_relative]] draw');
    expect(answer.text).toBe('Drawn.');
    expect(answer.files[0]?.url).toMatch(new RegExp(`^${fake.origin}/files/tools/[0-9a-f-]+\\.png\\?timestamp=`));
  });

  it('collects message_end.files and workflow output files once per path', async () => {
    const { fake, dify } = await setup({ mode: 'workflow' }, { appType: 'workflow' });
    const file = { dify_model_identity: '__dify__file__', type: 'image', filename: 'a.png', mime_type: 'image/png', url: '/files/tools/a.png?sign=1' };
    fake.script(async (s) => {
      await s.emit('workflow_finished', { data: { id: s.workflowRunId, status: 'succeeded', outputs: { answer: 'see', pics: [file] }, files: [{ ...file, url: '/files/tools/a.png?sign=2' }] } });
    });
    const answer = await ask(dify, 'x');
    expect(answer.files).toEqual([{ url: `${fake.origin}/files/tools/a.png?sign=1`, type: 'image', mimeType: 'image/png', filename: 'a.png', from: 'workflow_output' }]);

    fake.configure({ mode: 'chat' });
    const chat = createDifyClient({ baseUrl: fake.baseUrl, apiKey: fake.apiKey, appType: 'chat', queryVariable: 'q', idleTimeoutMs: 1_000, totalTimeoutMs: 5_000, logger });
    fake.script(async (s) => {
      await s.emit('message', { answer: 'with file' });
      await s.emit('message_end', { files: [{ type: 'document', url: 'https://cdn.example/x.pdf', mime_type: 'application/pdf' }] });
    });
    expect((await chat.ask({ query: 'y', user: USER, inputs: {} })).files).toEqual([
      { url: 'https://cdn.example/x.pdf', type: 'document', mimeType: 'application/pdf', from: 'message_end' },
    ]);
  });

  it('keeps markdown images in the text and the fake serves their path', async () => {
    const { fake, dify } = await setup({ mode: 'advanced-chat', answer: 'A cat:' }, { appType: 'chatflow' });
    const answer = await ask(dify, '[[scenario:markdown_image]] cat');
    const path = /!\[cat\.png\]\((\/files\/tools\/[^)]+)\)/.exec(answer.text)?.[1];
    expect(path).toBeDefined();
    expect((await fetch(`${fake.origin}${path}`)).status).toBe(200);
  });

  it.each(['no_message_end', 'no_workflow_finished', 'reversed_terminal'] as const)(
    'completes a chatflow answer with %s',
    async (scenario) => {
      const { dify } = await setup({ mode: 'advanced-chat', answer: 'terminal games' }, { appType: 'chatflow' });
      expect(await ask(dify, `[[scenario:${scenario}]] hi`)).toMatchObject({ text: 'terminal games', truncated: false });
    },
  );

  it('returns text that ended without any terminal event as truncated', async () => {
    const { dify } = await setup({ answer: 'cut short' });
    expect(await ask(dify, '[[scenario:no_terminal]] hi')).toMatchObject({ text: 'cut short', truncated: true });
  });

  it('keeps the text before an abrupt disconnect mid-frame, marked truncated', async () => {
    const { fake, dify } = await setup({ answer: 'abcdefghijkl', chunkSize: 3 });
    expect(await ask(dify, '[[scenario:disconnect]] hi')).toMatchObject({ text: 'abcdef', truncated: true });
    expect(fake.runRequests()).toHaveLength(1);
  });

  it('fails a stream that ends with no text and no terminal event', async () => {
    const { fake, dify } = await setup();
    const err = await rejection(ask(dify, '[[scenario:empty]] hi'));
    expect(err).toMatchObject({ code: 'dify_stream', retryable: false });
    expect(fake.runRequests()).toHaveLength(1);
  });

  it('maps an in-stream error to dify_stream with its status and code', async () => {
    const { fake, dify } = await setup({ answer: 'partial answer' });
    const err = await rejection(ask(dify, '[[scenario:llm_error]] hi'));
    expect(err).toMatchObject({ code: 'dify_stream', status: 400, retryable: false });
    expect(err.message).toContain('completion_request_error');
    expect(fake.runRequests()).toHaveLength(1);
  });

  it('maps a failed workflow to dify_stream', async () => {
    const { dify } = await setup({ mode: 'workflow' }, { appType: 'workflow' });
    const err = await rejection(ask(dify, '[[scenario:workflow_failed]] hi'));
    expect(err.code).toBe('dify_stream');
    expect(err.message).toContain('Incorrect API key');
  });
});

describe('DifyClient onConversationId', () => {
  it('is called once with the first conversation id, before the answer completes', async () => {
    const { dify } = await setup({ mode: 'advanced-chat', answer: 'a fairly long answer in chunks', chunkDelayMs: 15 }, { appType: 'chatflow' });
    let settled = false;
    const seen: Array<{ id: string; settled: boolean }> = [];
    const p = ask(dify, 'hi', {
      onConversationId: async (id) => {
        seen.push({ id, settled });
        await sleep(30);
      },
    }).finally(() => { settled = true; });
    const answer = await p;
    expect(seen).toEqual([{ id: answer.conversationId, settled: false }]);
  });

  it('does not hold up the events after it: a file is seen while the save runs, and the answer waits for the save', async () => {
    const { dify } = await setup({ mode: 'chat', chunkDelayMs: 10 });
    let savedAt = 0;
    let fileAt = 0;
    const answer = await ask(dify, '[[scenario:message_file]] draw', {
      onConversationId: async () => {
        await sleep(400);
        savedAt = Date.now();
      },
      onFile: () => { fileAt ||= Date.now(); },
    });
    const answeredAt = Date.now();
    expect(answer.files).toHaveLength(1);
    // the file event came a few chunks after the conversation id: it was applied at once
    expect(fileAt).toBeGreaterThan(0);
    expect(savedAt).toBeGreaterThan(0);
    expect(fileAt).toBeLessThan(savedAt);
    expect(answeredAt).toBeGreaterThanOrEqual(savedAt);
  });

  it.each([
    ['rejects', () => Promise.reject(new Error('redis away'))],
    ['throws at once', () => { throw new Error('redis away'); }],
  ])('keeps the answer when the save %s', async (_how, onConversationId: () => Promise<void>) => {
    const { dify } = await setup({ mode: 'chat', answer: 'still answered' });
    const answer = await ask(dify, 'hi', { onConversationId });
    expect(answer.text).toBe('still answered');
  });

  it('is not called when the conversation continues under the same id', async () => {
    const { fake, dify } = await setup();
    const onConversationId = vi.fn();
    await ask(dify, 'hi', { conversationId: fake.createConversation(USER), onConversationId });
    expect(onConversationId).not.toHaveBeenCalled();
  });
});

describe('DifyClient watchdog', () => {
  it('does not let pings reset the idle watchdog, and closes the request', async () => {
    const { fake, dify } = await setup({ pingIntervalMs: 10 }, { idleTimeoutMs: 150 });
    const started = Date.now();
    const err = await rejection(ask(dify, '[[scenario:hang]] hi'));
    expect(err).toMatchObject({ code: 'dify_timeout', retryable: false });
    expect(Date.now() - started).toBeLessThan(1_000);
    await vi.waitFor(() => expect(fake.runRequests()[0]?.clientClosed).toBe(true));
    expect(fake.runRequests()).toHaveLength(1);
  });

  it('waits through a slow start with pings when it is within the idle timeout', async () => {
    const { dify } = await setup({ answer: 'slow but sure' }, { idleTimeoutMs: 400 });
    expect((await ask(dify, '[[scenario:slow+delay=200]] hi')).text).toBe('slow but sure');
  });

  it('aborts at the total deadline, the fake sees the socket close, and the task is stopped', async () => {
    const { fake, dify } = await setup({ answer: 'x'.repeat(200), chunkSize: 1, chunkDelayMs: 20 }, { idleTimeoutMs: 1_000, totalTimeoutMs: 250 });
    const err = await rejection(ask(dify, 'hi'));
    expect(err).toMatchObject({ code: 'dify_timeout', retryable: false });
    await vi.waitFor(() => expect(fake.runRequests()[0]?.clientClosed).toBe(true));
    await vi.waitFor(() => expect(fake.stops).toHaveLength(1));
    expect(fake.stops[0]?.user).toBe(USER);
    expect(fake.stops[0]?.path).toMatch(/^\/v1\/chat-messages\/[0-9a-f-]+\/stop$/);
  });

  it('stops a workflow task through its own stop route', async () => {
    const { fake, dify } = await setup({ mode: 'workflow', answer: 'y'.repeat(100), chunkSize: 1, chunkDelayMs: 20 }, { appType: 'workflow', idleTimeoutMs: 1_000, totalTimeoutMs: 200 });
    await rejection(ask(dify, 'hi'));
    await vi.waitFor(() => expect(fake.stops[0]?.path).toMatch(/^\/v1\/workflows\/tasks\/[0-9a-f-]+\/stop$/));
  });

  it('aborts when the caller signal fires', async () => {
    const { fake, dify } = await setup({ pingIntervalMs: 10 }, { idleTimeoutMs: 2_000 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const err = await rejection(ask(dify, '[[scenario:hang]] hi', { signal: ac.signal }));
    expect(err.code).toBe('dify_timeout');
    await vi.waitFor(() => expect(fake.runRequests()[0]?.clientClosed).toBe(true));
  });

  it('returns a complete answer when the server does not close after the terminal event', async () => {
    const { dify } = await setup({}, { idleTimeoutMs: 200 });
    const { fake: f } = { fake: fake! };
    f.script(async (s) => {
      await s.emit('message', { answer: 'done' });
      await s.emit('message_end', {});
      await s.sleep(5_000);
    });
    expect(await ask(dify, 'hi')).toMatchObject({ text: 'done', truncated: false });
    expect(f.stops).toHaveLength(0);
  });
});

describe('DifyClient retries', () => {
  it('retries 429 before the first event, then succeeds', async () => {
    const { fake, dify } = await setup({ answer: 'after 429' });
    fake.enqueue('http_429');
    expect((await ask(dify, 'hi')).text).toBe('after 429');
    expect(fake.runRequests().map((r) => r.status)).toEqual([429, 200]);
  });

  it('retries 5xx with backoff, then succeeds', async () => {
    const { fake, dify } = await setup({ answer: 'after 500s' }, { retry: { attempts: 2, baseDelayMs: 40 } });
    fake.enqueue('http_500', 'http_500');
    const started = Date.now();
    expect((await ask(dify, 'hi')).text).toBe('after 500s');
    expect(Date.now() - started).toBeGreaterThanOrEqual(40 + 80);
    expect(fake.runRequests().map((r) => r.status)).toEqual([500, 500, 200]);
  });

  it('gives up after the retries with a retryable dify_http carrying the status', async () => {
    const { fake, dify } = await setup();
    fake.enqueue('http_429', 'http_429', 'http_429', 'http_429');
    const err = await rejection(ask(dify, 'hi'));
    expect(err).toMatchObject({ code: 'dify_http', status: 429, retryable: true });
    expect(err.message).toContain('too_many_requests');
    expect(fake.runRequests()).toHaveLength(3);
  });

  it('retries a connection reset before any event', async () => {
    const { fake, dify } = await setup({ answer: 'second time lucky' });
    fake.script(async (s) => { s.destroy(); });
    expect((await ask(dify, 'hi')).text).toBe('second time lucky');
    expect(fake.runRequests()).toHaveLength(2);
  });

  it('never retries once an event has arrived', async () => {
    const { fake, dify } = await setup({ mode: 'advanced-chat' }, { appType: 'chatflow' });
    fake.script(async (s) => {
      await s.emit('workflow_started', { data: { id: s.workflowRunId } });
      await s.sleep(20);
      s.destroy();
    });
    const err = await rejection(ask(dify, 'hi'));
    expect(err).toMatchObject({ code: 'dify_stream', retryable: false });
    expect(fake.runRequests()).toHaveLength(1);
  });

  it('does not retry a provider error (400)', async () => {
    const { fake, dify } = await setup();
    const err = await rejection(ask(dify, '[[scenario:provider_error+code=provider_quota_exceeded]] hi'));
    expect(err).toMatchObject({ code: 'dify_http', status: 400, retryable: false });
    expect(err.message).toContain('provider_quota_exceeded');
    expect(fake.runRequests()).toHaveLength(1);
  });

  it('does not retry a bad API key (401)', async () => {
    const { fake } = await setup();
    const dify = createDifyClient({ baseUrl: fake.baseUrl, apiKey: 'app-nope', appType: 'chat', queryVariable: 'q', idleTimeoutMs: 500, totalTimeoutMs: 2_000, logger });
    const err = await rejection(dify.ask({ query: 'hi', user: USER, inputs: {} }));
    expect(err).toMatchObject({ code: 'dify_http', status: 401, retryable: false });
    expect(fake.runRequests()).toHaveLength(1);
  });
});

describe('DifyClient lost conversation', () => {
  /** Asks with the stored conversation `stale` and checks it was dropped for a new one; returns the answer. */
  async function askExpectingReset(fake: FakeDify, dify: DifyClient, stale: string) {
    const ids: string[] = [];
    const answer = await ask(dify, 'hi', { conversationId: stale, onConversationId: (id) => { ids.push(id); } });
    await expectReset(fake, answer, stale, ids);
    return answer;
  }

  async function expectReset(fake: FakeDify, answer: Awaited<ReturnType<DifyClient['ask']>>, stale: string, ids: string[]): Promise<void> {
    expect(answer.conversationReset).toBe(true);
    expect(answer.conversationId).toBeDefined();
    expect(answer.conversationId).not.toBe(stale);
    expect(ids).toEqual([answer.conversationId]);
    const runs = fake.runRequests();
    expect(runs).toHaveLength(2);
    expect(runs[0]?.body).toMatchObject({ conversation_id: stale });
    expect(runs[1]?.body).not.toHaveProperty('conversation_id');
  }

  it('drops a conversation Dify answers 404 for and retries once without it', async () => {
    const { fake, dify } = await setup({ answer: 'fresh start' });
    const stale = randomUUID();
    const answer = await askExpectingReset(fake, dify, stale);
    expect(answer.text).toBe('fresh start');
  });

  it('recognises the 404 with Flask\'s "did you mean" suffix', async () => {
    const { fake, dify } = await setup();
    const stale = fake.createConversation(USER);
    fake.enqueue('gone_suffixed');
    await askExpectingReset(fake, dify, stale);
  });

  it('recognises an in-stream error with message null before any text', async () => {
    const { fake, dify } = await setup({ unknownConversation: 'stream_error', mode: 'advanced-chat' }, { appType: 'chatflow' });
    const stale = randomUUID();
    await askExpectingReset(fake, dify, stale);
  });

  it('recognises a hang with pings only', async () => {
    const { fake, dify } = await setup({ unknownConversation: 'hang', pingIntervalMs: 10 }, { idleTimeoutMs: 150 });
    const stale = randomUUID();
    await askExpectingReset(fake, dify, stale);
    expect(fake.runRequests()[0]?.clientClosed).toBe(true);
  });

  it('recovers from a hang on a deleted conversation once GET /messages answers 404', async () => {
    const { fake, dify } = await setup({ unknownConversation: 'hang', pingIntervalMs: 10, answer: 'new context' }, { idleTimeoutMs: 150 });
    const deleted = fake.createConversation(USER);
    fake.deleteConversation(USER, deleted);
    const answer = await askExpectingReset(fake, dify, deleted);
    expect(answer.text).toBe('new context');
    const checks = fake.requests.filter((r) => r.path === '/v1/messages');
    expect(checks.map((r) => r.status)).toEqual([404]);
    expect(Object.fromEntries(new URL(checks[0]!.url, fake.origin).searchParams)).toEqual({ conversation_id: deleted, user: USER, limit: '1' });
  });

  it('recovers from a scripted gone_hang on a conversation the fake then no longer lists', async () => {
    const { fake, dify } = await setup({ pingIntervalMs: 10 }, { idleTimeoutMs: 150 });
    const stale = fake.createConversation(USER);
    fake.enqueue('gone_hang');
    await askExpectingReset(fake, dify, stale);
  });

  it('keeps the conversation of a slow start that GET /messages still knows, and reports the timeout', async () => {
    const { fake, dify } = await setup({ pingIntervalMs: 10 }, { idleTimeoutMs: 150 });
    const kept = fake.createConversation(USER);
    const onConversationId = vi.fn();
    const err = await rejection(ask(dify, '[[scenario:slow+delay=600]] hi', { conversationId: kept, onConversationId }));
    expect(err).toMatchObject({ code: 'dify_timeout', retryable: false });
    expect(fake.runRequests()).toHaveLength(1);
    expect(fake.requests.filter((r) => r.path === '/v1/messages').map((r) => r.status)).toEqual([200]);
    expect(onConversationId).not.toHaveBeenCalled();
    expect(fake.conversationIds(USER)).toEqual([kept]);
  });

  it('resets only once', async () => {
    const { fake, dify } = await setup();
    fake.enqueue('gone_http', 'error_null');
    const err = await rejection(ask(dify, 'hi', { conversationId: fake.createConversation(USER) }));
    expect(err.code).toBe('dify_stream');
    expect(fake.runRequests()).toHaveLength(2);
  });

  it('treats an error with message null as a plain stream error without a stored conversation', async () => {
    const { fake, dify } = await setup();
    const err = await rejection(ask(dify, '[[scenario:error_null]] hi'));
    expect(err).toMatchObject({ code: 'dify_stream', status: 400 });
    expect(fake.runRequests()).toHaveLength(1);
  });
});

describe('fake Dify', () => {
  it('answers a bad key with Dify\'s exact 401 body and WWW-Authenticate header', async () => {
    const { fake } = await setup();
    const res = await fetch(`${fake.baseUrl}/chat-messages`, { method: 'POST', headers: { authorization: 'Bearer nope', 'content-type': 'application/json' }, body: '{}' });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Bearer realm="api"');
    expect(await res.json()).toEqual({ code: 'unauthorized', message: 'Access token is invalid', status: 401 });
  });

  it('validates in Dify\'s order: user, route, schema, query', async () => {
    const { fake } = await setup();
    const post = async (body: unknown) => {
      const res = await fetch(`${fake.baseUrl}/chat-messages`, { method: 'POST', headers: { authorization: `Bearer ${fake.apiKey}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return (await res.json()) as { code: string; message: string; status: number };
    };
    expect(await post({ query: 'hi', inputs: {} })).toMatchObject({ code: 'invalid_param', message: 'Arg user must be provided.' });
    expect((await post({ query: 'hi', user: 'u' })).message).toContain('inputs\n  Field required');
    expect((await post({ query: 'hi', user: 'u', inputs: {}, conversation_id: 'nope' })).message).toContain('conversation_id must be a valid UUID');
    expect(await post({ query: '', user: 'u', inputs: {} })).toMatchObject({ code: 'invalid_param', message: 'query is required' });
    expect(await post({ query: 'hi', user: 'u', inputs: {}, conversation_id: randomUUID() })).toEqual({ code: 'not_found', message: 'Conversation Not Exists.', status: 404 });
  });

  it('stops a task only for the user who started it, ending with a partial message_end', async () => {
    const { fake, dify } = await setup({ answer: 'z'.repeat(60), chunkSize: 1, chunkDelayMs: 10 });
    const pending = ask(dify, 'hi');
    await vi.waitFor(() => expect(fake.runRequests()).toHaveLength(1));
    await sleep(50);
    const stopAs = (task: string, user: string) => fetch(`${fake.baseUrl}/chat-messages/${task}/stop`, {
      method: 'POST', headers: { authorization: `Bearer ${fake.apiKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ user }),
    });
    const answerSoFar = await Promise.race([pending.then(() => 'done'), sleep(10).then(() => 'running')]);
    expect(answerSoFar).toBe('running');
    const task = fake.runningTaskIds()[0] ?? '';
    expect(await (await stopAs(task, 'someone-else')).json()).toEqual({ result: 'success' });
    await sleep(40);
    expect(fake.runningTaskIds()).toContain(task);
    await stopAs(task, USER);
    const answer = await pending;
    expect(answer.truncated).toBe(false);
    expect(answer.text.length).toBeGreaterThan(0);
    expect(answer.text.length).toBeLessThan(60);
    expect(fake.stopCount).toBe(2);
  });

  it('deletes a conversation with 204, after which it is gone', async () => {
    const { fake, dify } = await setup();
    const id = fake.createConversation(USER);
    const res = await fetch(`${fake.baseUrl}/conversations/${id}`, { method: 'DELETE', headers: { authorization: `Bearer ${fake.apiKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ user: USER }) });
    expect(res.status).toBe(204);
    expect(await res.text()).toBe('');
    expect((await ask(dify, 'hi', { conversationId: id })).conversationReset).toBe(true);
  });

  it('keeps a queued scenario for the retry when a stale conversation fails on its own', async () => {
    const { fake, dify } = await setup();
    fake.enqueue({ name: 'normal', answer: 'queued answer' });
    const answer = await ask(dify, 'hi', { conversationId: randomUUID() });
    expect(answer).toMatchObject({ text: 'queued answer', conversationReset: true });
  });

  it('expires served files', async () => {
    const { dify } = await setup({ filesTtlMs: 50 });
    const answer = await ask(dify, '[[scenario:message_file]] draw');
    await sleep(80);
    expect((await fetch(answer.files[0]!.url)).status).toBe(403);
  });
});
