// The Dify Service API client: streaming only, read to EOF, a watchdog on data events.
// Wire rules and pitfalls: https://docs.dify.ai/en/api-reference/guides/streaming and
// https://docs.dify.ai/en/api-reference/guides/errors; see also /work/shared/research/dify-api.md.
import { finished } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Got, Request, Response } from 'got';

// got is loaded on first use: only the worker talks to Dify, and the ingress, which imports this
// package too, keeps ~15 MB of memory by never loading it.
let gotModule: Promise<Got> | undefined;
const loadGot = (): Promise<Got> => (gotModule ??= import('got').then((m) => m.default));
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import { SseDecoder, isDifyEvent, type SseItem } from './sse.js';
import {
  APP_TYPE_MODES,
  type DifyAnswer,
  type DifyAnswerFile,
  type DifyAnswerFileSource,
  type DifyAppInfo,
  type DifyAppMode,
  type DifyAppType,
  type DifyErrorBody,
  type DifyFileInput,
  type DifyParameters,
  type RawDifyEvent,
  type StreamErrorEvent,
  type WorkflowFinishedEvent,
} from './types.js';

/** Options of {@link createDifyClient}; one client per Dify app (API key). */
export interface DifyClientOptions {
  /** The Service API base, e.g. `https://api.dify.ai/v1`. */
  baseUrl: string;
  apiKey: string;
  appType: DifyAppType;
  /** The input variable that receives the user's text in completion and workflow apps. */
  queryVariable: string;
  /** The workflow output holding the answer; unset: the `text_chunk` text, else the first string output. */
  outputVariable?: string;
  /** Longest wait for a data event (pings do not count). */
  idleTimeoutMs: number;
  /** Longest `ask`, retries included. */
  totalTimeoutMs: number;
  logger: Logger;
  /** Retries before the first event (429, 5xx, network); default 2 more attempts from 500 ms. */
  retry?: { attempts: number; baseDelayMs: number };
}

/** One question to Dify. */
export interface DifyAskRequest {
  query: string;
  /** Dify's end-user id; it scopes conversations, files and stop. */
  user: string;
  inputs: Record<string, unknown>;
  conversationId?: string;
  files?: DifyFileInput[];
  signal?: AbortSignal;
  /**
   * Called once, when the first event names a conversation other than `conversationId`: persist it
   * then. The stream is read on meanwhile; the answer (or the failure) returns only once the
   * promise settled. A rejection is logged and the answer kept: the follower gets it, and their
   * next message starts a new conversation.
   */
  onConversationId?: (id: string) => void | Promise<void>;
  /** The job's logger; the client's otherwise. */
  logger?: Logger;
  /** Called once per answer file as soon as the stream names it (signed URLs expire 5 minutes after signing). */
  onFile?: (file: DifyAnswerFile) => void;
  /** Called for every failed try (HTTP, network, stream, timeout), the retried ones too: metrics see retries. */
  onTryFailed?: (err: AppError) => void;
}

/** The Dify Service API as the relay uses it. */
export interface DifyClient {
  /** The app mode: fixed by configuration, or `GET /info` once for `auto`. */
  getAppMode(): Promise<DifyAppMode>;
  /** `GET /parameters`, cached. */
  getParameters(): Promise<DifyParameters>;
  /** Whether the app takes image files as `remote_url`; false when `/parameters` cannot be read. */
  acceptsImages(): Promise<boolean>;
  /** Asks a question and reads the streamed answer to its end. */
  ask(req: DifyAskRequest): Promise<DifyAnswer>;
  /**
   * `POST /audio-to-text`: the transcript of one audio file, for the same `user` as the chat.
   * Dify checks the part's content type: MP3 must go as `audio/mp3` (it refuses `audio/mpeg`).
   * A 400 means speech-to-text is off or has no model; 413/415 a file it will not take.
   */
  audioToText(audio: Uint8Array, user: string, opts?: AudioToTextOptions): Promise<string>;
}

/** Options of {@link DifyClient.audioToText}. */
export interface AudioToTextOptions {
  /** Default `audio/mp3`. */
  contentType?: string;
  /** Default `voice.mp3`. */
  filename?: string;
  signal?: AbortSignal;
}

const DEFAULT_RETRY = { attempts: 2, baseDelayMs: 500 };
/** After a terminal event only stragglers (the other terminal event, `tts_message_end`) may follow. */
const TERMINAL_GRACE_MS = 2_000;
const ERROR_BODY_LIMIT = 64 * 1024;
const STOP_TIMEOUT_MS = 5_000;
/** The lookup that tells a lost conversation from a slow answer. */
const CONVERSATION_CHECK_TIMEOUT_MS = 10_000;
/** Speech-to-text of a WeChat voice (at most 60 s) takes seconds; the total deadline still caps it. */
const AUDIO_TO_TEXT_TIMEOUT_MS = 60_000;

/** Endpoints per mode: run and stop (https://docs.dify.ai/en/api-reference). */
const ROUTES = {
  chat: { run: '/chat-messages', stop: (task: string) => `/chat-messages/${task}/stop` },
  completion: { run: '/completion-messages', stop: (task: string) => `/completion-messages/${task}/stop` },
  workflow: { run: '/workflows/run', stop: (task: string) => `/workflows/tasks/${task}/stop` },
} as const;

type StopReason = 'idle' | 'total' | 'caller';

interface Ctx {
  base: string;
  opts: DifyClientOptions;
  mode: DifyAppMode;
  req: DifyAskRequest;
  log: Logger;
  startedAt: number;
  deadlineAt: number;
}

interface AnswerState {
  text: string;
  files: Map<string, DifyAnswerFile>;
  outputs?: Record<string, unknown> | null;
  conversationId?: string;
  messageId?: string;
  taskId?: string;
  dataEvents: number;
  firstEventMs?: number;
  sawAgentMessage: boolean;
  terminal: boolean;
  eof: boolean;
  /** onConversationId's work, awaited before the attempt returns (not before the next event is read). */
  saving?: Promise<void>;
}

type AttemptAnswer = Omit<DifyAnswer, 'conversationReset' | 'totalMs'>;

/** Creates a client for one Dify app. */
export function createDifyClient(opts: DifyClientOptions): DifyClient {
  const base = opts.baseUrl.replace(/\/+$/, '');
  let mode: Promise<DifyAppMode> | undefined;
  let parameters: Promise<DifyParameters> | undefined;

  const client: DifyClient = {
    getAppMode() {
      if (opts.appType !== 'auto') return Promise.resolve(APP_TYPE_MODES[opts.appType]);
      mode ??= getJson<DifyAppInfo>(base, opts, '/info').then((info) => toMode(info.mode));
      mode.catch(() => { mode = undefined; });
      return mode;
    },
    getParameters() {
      parameters ??= getJson<DifyParameters>(base, opts, '/parameters');
      parameters.catch(() => { parameters = undefined; });
      return parameters;
    },
    async acceptsImages() {
      try {
        return acceptsRemoteImages((await client.getParameters()).file_upload);
      } catch (err) {
        opts.logger.warn({ err }, 'dify parameters unreadable, assuming no images');
        return false;
      }
    },
    async ask(req) {
      const startedAt = Date.now();
      const ctx: Ctx = {
        base, opts, req, startedAt,
        mode: await client.getAppMode(),
        log: req.logger ?? opts.logger,
        deadlineAt: startedAt + opts.totalTimeoutMs,
      };
      const done = (a: AttemptAnswer, conversationReset: boolean): DifyAnswer => {
        const answer = { ...a, conversationReset, totalMs: Date.now() - startedAt };
        ctx.log.debug({ mode: ctx.mode, ms: answer.totalMs, firstEventMs: answer.firstEventMs, chars: answer.text.length,
          files: answer.files.length, truncated: answer.truncated, conversationReset }, 'dify answered');
        return answer;
      };
      try {
        return done(await askWithRetry(ctx, req.conversationId), false);
      } catch (err) {
        if (!(err instanceof AppError) || err.code !== 'dify_conversation_gone') throw err;
        ctx.log.warn({ status: err.status, err: err.message }, 'dify conversation gone, starting a new one');
        return done(await askWithRetry(ctx, undefined), true);
      }
    },
    audioToText(audio, user, o = {}) {
      return postAudioToText(base, opts, audio, user, o);
    },
  };
  return client;
}

/** https://docs.dify.ai/en/api-reference (audio-to-text): multipart `file` and `user`, answers `{ text }`. */
async function postAudioToText(base: string, opts: DifyClientOptions, audio: Uint8Array, user: string, o: AudioToTextOptions): Promise<string> {
  const path = '/audio-to-text';
  const form = new FormData();
  form.set('file', new Blob([new Uint8Array(audio)], { type: o.contentType ?? 'audio/mp3' }), o.filename ?? 'voice.mp3');
  form.set('user', user);
  let res: Response<string>;
  try {
    res = await (await loadGot()).post(`${base}${path}`, {
      body: form,
      headers: authHeader(opts),
      throwHttpErrors: false,
      retry: { limit: 0 },
      timeout: { request: Math.min(AUDIO_TO_TEXT_TIMEOUT_MS, opts.totalTimeoutMs) },
      ...(o.signal ? { signal: o.signal } : {}),
    });
  } catch (err) {
    throw new AppError('dify_http', `dify POST ${path} failed: ${errorCode(err)}`, { retryable: true, cause: err });
  }
  if (res.statusCode !== 200) throw httpError(res.statusCode, parseErrorBody(res.body), path, undefined);
  let text: unknown;
  try {
    text = (JSON.parse(res.body) as { text?: unknown } | null)?.text;
  } catch { /* not JSON: refused below */ }
  if (typeof text !== 'string') throw new AppError('dify_http', `dify POST ${path} answered without a text`, { status: res.statusCode });
  return text;
}

/**
 * Images go to Dify as `remote_url` files, so the app must take images and that transfer method.
 * Dify checks every method list its upload config has (the `image` block's `transfer_methods`, the
 * newer `allowed_file_upload_methods`) and refuses the whole message with 400 "File validation
 * failed" when one lacks the method; with no list at all there is nothing to rely on.
 */
function acceptsRemoteImages(upload: DifyParameters['file_upload']): boolean {
  if (!upload) return false;
  const imagesOn = upload.image?.enabled === true || (upload.enabled === true && (upload.allowed_file_types ?? []).includes('image'));
  const lists = [upload.image?.transfer_methods, upload.enabled === true ? upload.allowed_file_upload_methods : undefined]
    .filter((l): l is string[] => Array.isArray(l) && l.length > 0);
  return imagesOn && lists.length > 0 && lists.every((l) => l.includes('remote_url'));
}

/** Resolves a file URL Dify gave (relative when `FILES_URL` is unset) against the Dify origin. */
export function resolveDifyUrl(baseUrl: string, url: string): string {
  return new URL(url, new URL(baseUrl).origin).toString();
}

/** Retries 429, 5xx and network errors with exponential backoff, only while no event has arrived. */
async function askWithRetry(ctx: Ctx, conversationId: string | undefined): Promise<AttemptAnswer> {
  const retry = ctx.opts.retry ?? DEFAULT_RETRY;
  for (let attempt = 0; ; attempt++) {
    try {
      return await runAttempt(ctx, conversationId);
    } catch (err) {
      if (err instanceof AppError && !ctx.req.signal?.aborted) ctx.req.onTryFailed?.(err);
      if (!(err instanceof AppError) || !err.retryable || attempt >= retry.attempts) throw err;
      const delayMs = retry.baseDelayMs * 2 ** attempt;
      if (Date.now() + delayMs >= ctx.deadlineAt) throw err;
      ctx.log.warn({ attempt: attempt + 1, delayMs, status: err.status, err: err.message }, 'dify request failed, retrying');
      await sleep(delayMs, undefined, { signal: ctx.req.signal }).catch(() => {
        throw callerAborted(ctx.req.signal);
      });
    }
  }
}

/**
 * One HTTP request. A conversation id being saved is waited for before the answer (or the failure)
 * returns: the follower's next message reads it.
 */
async function runAttempt(ctx: Ctx, conversationId: string | undefined): Promise<AttemptAnswer> {
  const state: AnswerState = { text: '', files: new Map(), dataEvents: 0, sawAgentMessage: false, terminal: false, eof: false };
  try {
    return await streamAttempt(ctx, conversationId, state);
  } finally {
    await state.saving?.catch((err: unknown) => ctx.log.warn({ err }, 'dify conversation id not saved; the next message starts a new conversation'));
  }
}

/**
 * Streams and parses one request into `state`, and always closes it when done or giving up. The
 * watchdog destroys the stream itself (got's `signal` option costs about 40 µs a request) and
 * the events are read from `data` listeners (an async iterator costs about as much again).
 */
async function streamAttempt(ctx: Ctx, conversationId: string | undefined, state: AnswerState): Promise<AttemptAnswer> {
  const route = routeOf(ctx.mode);
  let stream: Request | undefined;
  let dog: Watchdog | undefined;
  try {
    stream = (await loadGot()).stream.post(`${ctx.base}${route.run}`, {
      json: buildBody(ctx, conversationId),
      headers: { ...authHeader(ctx.opts), accept: 'text/event-stream', 'accept-encoding': 'identity' },
      throwHttpErrors: false,
      retry: { limit: 0 },
    });
    dog = startWatchdog(stream, ctx.opts.idleTimeoutMs, ctx.deadlineAt, ctx.req.signal);
    const res = await waitForResponse(stream);
    if (res.statusCode !== 200) throw httpError(res.statusCode, await readErrorBody(stream), route.run, conversationId);
    await readEvents(ctx, state, stream, dog, conversationId);
    state.eof = true;
    return finish(ctx, state);
  } catch (err) {
    if (err instanceof AppError) throw err;
    if (dog?.reason) return await onGiveUp(ctx, state, dog.reason, conversationId);
    return onBrokenStream(ctx, state, err);
  } finally {
    dog?.clear();
    stream?.destroy();
    if (!state.terminal && !state.eof && state.taskId) sendStop(ctx, route.stop(state.taskId));
  }
}

/**
 * Applies the stream's events as they come, until it ends (Node's `finished`: an error, a close
 * before the end, or a stream destroyed already all reject). An event that fails the answer (a
 * stream `error` event, a frame too large) destroys the stream and is rethrown as it is: got
 * would wrap it in a RequestError.
 */
async function readEvents(ctx: Ctx, state: AnswerState, stream: Request, dog: Watchdog, conversationId: string | undefined): Promise<void> {
  const { idleTimeoutMs } = ctx.opts;
  const decoder = new SseDecoder({ log: ctx.log });
  const apply = (items: SseItem[]) => {
    for (const item of items) {
      if (item.type === 'ping') continue;
      dog.touch(idleTimeoutMs);
      onEvent(ctx, state, item.event, conversationId);
      if (state.terminal) dog.touch(Math.min(idleTimeoutMs, TERMINAL_GRACE_MS));
    }
  };
  let failed: { err: unknown } | undefined;
  const onData = (chunk: Buffer) => {
    try {
      apply(decoder.feed(chunk));
    } catch (err) {
      failed = { err };
      stream.destroy();
    }
  };
  stream.on('data', onData);
  try {
    await finished(stream, { writable: false, cleanup: true });
  } catch (err) {
    throw failed ? failed.err : err;
  } finally {
    stream.off('data', onData);
  }
  apply(decoder.end());
}

/** Applies one data event: ids, the conversation callback, errors, text, files, terminal. */
function onEvent(ctx: Ctx, state: AnswerState, e: RawDifyEvent, sentConversationId: string | undefined): void {
  state.dataEvents++;
  state.firstEventMs ??= Date.now() - ctx.startedAt;
  if (typeof e.task_id === 'string' && e.task_id) state.taskId ??= e.task_id;
  if (typeof e.message_id === 'string' && e.message_id) state.messageId ??= e.message_id;
  if (isDifyEvent(e, 'error')) {
    state.terminal = true;
    throw streamError(e, state.text === '' && sentConversationId !== undefined);
  }
  if (typeof e.conversation_id === 'string' && e.conversation_id && state.conversationId === undefined) {
    state.conversationId = e.conversation_id;
    const save = ctx.req.onConversationId;
    if (e.conversation_id !== sentConversationId && save) {
      const id = e.conversation_id;
      // async: a callback that throws at once is a failed save too, not a broken stream
      state.saving = (async () => save(id))();
      state.saving.catch(() => undefined); // logged where it is awaited, in runAttempt
    }
  }
  applyEvent(ctx, state, e);
}

/** Text and files: any event with a string `answer` is text (agent_message, message_file chunks, ...). */
function applyEvent(ctx: Ctx, state: AnswerState, e: RawDifyEvent): void {
  if (isDifyEvent(e, 'message_replace') && typeof e.answer === 'string') {
    state.text = e.answer;
  } else if (typeof e.answer === 'string') {
    // New Agent closes with one `message` holding the whole answer after its agent_message deltas
    state.text = e.event === 'message' && state.sawAgentMessage ? e.answer : state.text + e.answer;
  }
  if (e.event === 'agent_message') state.sawAgentMessage = true;
  if (isDifyEvent(e, 'message_file') && typeof e.url === 'string') {
    addFile(ctx, state, { url: e.url, type: e.type }, 'message_file');
  } else if (isDifyEvent(e, 'message_end')) {
    state.terminal = true;
    for (const f of Array.isArray(e.files) ? e.files : []) addFile(ctx, state, f, 'message_end');
  } else if (isDifyEvent(e, 'text_chunk') && ctx.mode === 'workflow' && typeof e.data?.text === 'string') {
    state.text += e.data.text;
  } else if (isDifyEvent(e, 'workflow_finished')) {
    onWorkflowFinished(ctx, state, e.data);
  } else if (isDifyEvent(e, 'workflow_paused')) {
    state.terminal = true;
    state.outputs = e.data?.outputs;
  }
}

function onWorkflowFinished(ctx: Ctx, state: AnswerState, data: WorkflowFinishedEvent['data'] | undefined): void {
  state.terminal = true;
  if (data?.status === 'failed') {
    throw new AppError('dify_stream', `dify workflow failed: ${data.error ?? 'no error text'}`);
  }
  state.outputs = data?.outputs;
  for (const f of collectFileObjects(data?.outputs)) addFile(ctx, state, f, 'workflow_output');
  for (const f of Array.isArray(data?.files) ? data.files : []) addFile(ctx, state, f, 'workflow_output');
}

/** The answer once the stream is over; no text and no terminal event is an error. */
function finish(ctx: Ctx, state: AnswerState): AttemptAnswer {
  const text = answerText(ctx, state);
  if (!state.terminal && text === '' && state.files.size === 0) {
    throw new AppError('dify_stream', `dify stream ended without an answer after ${state.dataEvents} events`);
  }
  if (!state.terminal) ctx.log.warn({ chars: text.length }, 'dify stream ended without a terminal event');
  return {
    text,
    files: [...state.files.values()],
    conversationId: state.conversationId,
    messageId: state.messageId,
    taskId: state.taskId,
    truncated: !state.terminal,
    firstEventMs: state.firstEventMs,
  };
}

/** The watchdog fired or the caller aborted: the request is already aborted. */
async function onGiveUp(ctx: Ctx, state: AnswerState, reason: StopReason, conversationId: string | undefined): Promise<AttemptAnswer> {
  if (reason === 'caller') throw callerAborted(ctx.req.signal);
  // a terminal event arrived and the server just did not close: the answer is complete
  if (state.terminal) return finish(ctx, state);
  // Dify versions that look the conversation up inside the generator hang with pings only (#38800),
  // but so does a slow model: drop the conversation (and pay for a second answer) only once Dify
  // confirms it is gone, or the follower loses their context to a slow answer.
  if (reason === 'idle' && conversationId !== undefined && state.dataEvents === 0 && (await isConversationGone(ctx, conversationId))) {
    throw new AppError('dify_conversation_gone', `no data event for ${ctx.opts.idleTimeoutMs} ms and GET /messages answers 404`);
  }
  const what = reason === 'idle'
    ? `no data event from dify for ${ctx.opts.idleTimeoutMs} ms`
    : `dify answer exceeded ${ctx.opts.totalTimeoutMs} ms`;
  throw new AppError('dify_timeout', `${what} (${state.dataEvents} events, ${state.text.length} chars)`);
}

/**
 * `GET /messages?conversation_id&user&limit=1` (dify-api.md §4.4): true only on 404 "Conversation
 * Not Exists"; any other answer, or none, leaves the conversation alone.
 */
async function isConversationGone(ctx: Ctx, conversationId: string): Promise<boolean> {
  const path = '/messages';
  try {
    const res = await (await loadGot()).get(`${ctx.base}${path}`, {
      searchParams: { conversation_id: conversationId, user: ctx.req.user, limit: 1 },
      headers: authHeader(ctx.opts),
      throwHttpErrors: false,
      retry: { limit: 0 },
      timeout: { request: Math.max(1, Math.min(ctx.opts.idleTimeoutMs, CONVERSATION_CHECK_TIMEOUT_MS, ctx.deadlineAt - Date.now())) },
      ...(ctx.req.signal ? { signal: ctx.req.signal } : {}),
    });
    const gone = res.statusCode !== 200 && isConversationGoneReply(res.statusCode, parseErrorBody(res.body));
    ctx.log.info({ status: res.statusCode, gone }, 'dify conversation checked after a silent stream');
    return gone;
  } catch (err) {
    ctx.log.warn({ path, code: errorCode(err) }, 'dify conversation check failed; keeping the conversation');
    return false;
  }
}

/** A network error: retryable before any event; after text, the answer so far is returned as truncated. */
function onBrokenStream(ctx: Ctx, state: AnswerState, err: unknown): AttemptAnswer {
  const code = errorCode(err);
  if (state.dataEvents === 0) {
    throw new AppError('dify_http', `dify request failed before any event: ${code}`, { retryable: true, cause: err });
  }
  if (state.text !== '' || state.terminal) {
    ctx.log.warn({ code, chars: state.text.length }, 'dify stream broke, keeping the answer so far');
    return finish(ctx, state);
  }
  throw new AppError('dify_stream', `dify stream broke after ${state.dataEvents} events: ${code}`, { cause: err });
}

function streamError(e: StreamErrorEvent, beforeText: boolean): AppError {
  const text = `dify stream error ${e.status ?? '-'} ${e.code ?? 'unknown'}: ${e.message ?? 'null'}`;
  // A lookup failure inside the generator arrives as `invalid_param` with message null (#37244);
  // matching the message text is the documented exception to "branch on code".
  const gone = e.message === null || (typeof e.message === 'string' && isConversationGoneMessage(e.message));
  if (beforeText && gone) return new AppError('dify_conversation_gone', text, { status: e.status });
  return new AppError('dify_stream', text, { status: e.status, cause: { code: e.code, status: e.status } });
}

function httpError(status: number, body: DifyErrorBody, path: string, conversationId: string | undefined): AppError {
  const code = body.code ?? 'unknown';
  const text = `dify ${path} answered HTTP ${status} ${code}: ${body.message ?? ''}`;
  if (conversationId !== undefined && isConversationGoneReply(status, body)) {
    return new AppError('dify_conversation_gone', text, { status, cause: body });
  }
  return new AppError('dify_http', text, { status, retryable: status === 429 || status >= 500, cause: body });
}

/** Dify's HTTP answer for a conversation it no longer has. */
function isConversationGoneReply(status: number, body: DifyErrorBody): boolean {
  return status === 404 && body.code === 'not_found' && isConversationGoneMessage(body.message);
}

/** "Conversation Not Exists." may carry a Flask "did you mean" suffix (#28481). */
function isConversationGoneMessage(message: string | null | undefined): boolean {
  return typeof message === 'string' && message.startsWith('Conversation Not Exists');
}

function callerAborted(signal: AbortSignal | undefined): AppError {
  if (signal?.reason instanceof AppError) return signal.reason;
  return new AppError('dify_timeout', 'dify request aborted by the caller', { cause: signal?.reason });
}

function buildBody(ctx: Ctx, conversationId: string | undefined): Record<string, unknown> {
  const { req, mode, opts } = ctx;
  const files = req.files && req.files.length > 0 ? { files: req.files } : {};
  const common = { user: req.user, response_mode: 'streaming', ...files };
  if (mode === 'workflow') return { ...common, inputs: { ...req.inputs, [opts.queryVariable]: req.query } };
  if (mode === 'completion') return { ...common, query: req.query, inputs: { ...req.inputs, [opts.queryVariable]: req.query } };
  return {
    ...common,
    query: req.query,
    inputs: req.inputs,
    auto_generate_name: false,
    ...(conversationId ? { conversation_id: conversationId } : {}),
  };
}

function routeOf(mode: DifyAppMode): (typeof ROUTES)[keyof typeof ROUTES] {
  if (mode === 'workflow') return ROUTES.workflow;
  if (mode === 'completion') return ROUTES.completion;
  return ROUTES.chat;
}

type Watchdog = ReturnType<typeof startWatchdog>;

/** Destroys `stream` when no data event came for the idle time, at the deadline, or when the caller aborts. */
function startWatchdog(stream: Request, idleMs: number, deadlineAt: number, signal: AbortSignal | undefined) {
  let reason: StopReason | undefined;
  const fire = (r: StopReason): void => {
    if (reason) return;
    reason = r;
    stream.destroy(new Error(`dify request given up: ${r}`));
  };
  let idleForMs = idleMs;
  let idle = setTimeout(fire, idleMs, 'idle');
  const total = setTimeout(fire, Math.max(0, deadlineAt - Date.now()), 'total');
  const onAbort = (): void => fire('caller');
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });
  return {
    get reason() { return reason; },
    // refresh() re-arms the same timer: no new Timeout for each of an answer's many events
    touch(ms: number) {
      if (ms === idleForMs) idle.refresh();
      else {
        clearTimeout(idle);
        idle = setTimeout(fire, (idleForMs = ms), 'idle');
      }
    },
    clear() { clearTimeout(idle); clearTimeout(total); signal?.removeEventListener('abort', onAbort); },
  };
}

function waitForResponse(stream: Request): Promise<Response> {
  return new Promise((resolve, reject) => {
    stream.once('response', resolve);
    // stays attached: it absorbs an error after the response, which readEvents reports
    stream.on('error', reject);
  });
}

async function readErrorBody(stream: Request): Promise<DifyErrorBody> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    if (size > ERROR_BODY_LIMIT) break;
  }
  return parseErrorBody(Buffer.concat(chunks).toString('utf8'));
}

function parseErrorBody(text: string): DifyErrorBody {
  try {
    const body: unknown = JSON.parse(text);
    if (typeof body === 'object' && body !== null) return body as DifyErrorBody;
  } catch { /* werkzeug or proxy HTML: keep a sample for the log */ }
  return { message: text.slice(0, 200) };
}

/** Fire-and-forget `POST …/stop` with the same user, so Dify frees the concurrency slot now. */
function sendStop(ctx: Ctx, path: string): void {
  void loadGot().then((got) => got.post(`${ctx.base}${path}`, {
    json: { user: ctx.req.user },
    headers: authHeader(ctx.opts),
    throwHttpErrors: false,
    retry: { limit: 0 },
    timeout: { request: STOP_TIMEOUT_MS },
  }).then(
    (res) => ctx.log.info({ path, status: res.statusCode }, 'dify task stopped'),
    (err: unknown) => ctx.log.warn({ path, code: errorCode(err) }, 'dify task stop failed'),
  ));
}

async function getJson<T>(base: string, opts: DifyClientOptions, path: string): Promise<T> {
  let res: Response<string>;
  try {
    res = await (await loadGot()).get(`${base}${path}`, {
      headers: authHeader(opts),
      throwHttpErrors: false,
      retry: { limit: 0 },
      timeout: { request: opts.idleTimeoutMs },
    });
  } catch (err) {
    throw new AppError('dify_http', `dify GET ${path} failed: ${errorCode(err)}`, { retryable: true, cause: err });
  }
  if (res.statusCode !== 200) throw httpError(res.statusCode, parseErrorBody(res.body), path, undefined);
  try {
    return JSON.parse(res.body) as T;
  } catch (err) {
    throw new AppError('dify_http', `dify GET ${path} answered non-JSON`, { status: res.statusCode, cause: err });
  }
}

function toMode(mode: string): DifyAppMode {
  if (mode === 'agent') return 'agent-chat'; // New Agent (beta): same route, streaming only
  if (mode === 'chat' || mode === 'agent-chat' || mode === 'advanced-chat' || mode === 'workflow' || mode === 'completion') return mode;
  throw new AppError('dify_http', `dify app mode ${mode} is not supported`);
}

function authHeader(opts: DifyClientOptions): Record<string, string> {
  return { authorization: `Bearer ${opts.apiKey}` };
}

/**
 * The answer text. A workflow's configured output variable wins (the operator named it); otherwise
 * the streamed text (`text_chunk`, `message`, ...), else the configured output of a chatflow, else
 * the first string output. Outputs often hold intermediate strings too, so an unnamed one must not
 * override what the End node streamed.
 */
function answerText(ctx: Ctx, state: AnswerState): string {
  const outputs = state.outputs && typeof state.outputs === 'object' ? state.outputs : {};
  const variable = ctx.opts.outputVariable;
  const named = variable === undefined ? undefined : outputs[variable];
  if (ctx.mode === 'workflow' && typeof named === 'string') return named;
  if (state.text !== '') return state.text;
  if (typeof named === 'string') return named;
  return Object.values(outputs).find((v): v is string => typeof v === 'string') ?? '';
}

/** File objects (`dify_model_identity: "__dify__file__"`) anywhere inside workflow outputs. */
function collectFileObjects(value: unknown, depth = 0): Array<Record<string, unknown>> {
  if (depth > 5 || typeof value !== 'object' || value === null) return [];
  if (Array.isArray(value)) return value.flatMap((v) => collectFileObjects(v, depth + 1));
  const obj = value as Record<string, unknown>;
  if (obj.dify_model_identity === '__dify__file__') return [obj];
  return Object.values(obj).flatMap((v) => collectFileObjects(v, depth + 1));
}

/** Adds a file once per URL path (the same file can come through several channels with other signatures). */
function addFile(ctx: Ctx, state: AnswerState, f: object, from: DifyAnswerFileSource): void {
  const raw = f as Record<string, unknown>;
  const url = typeof raw.url === 'string' && raw.url ? raw.url : typeof raw.remote_url === 'string' ? raw.remote_url : '';
  if (!url) return;
  let absolute: URL;
  try {
    absolute = new URL(resolveDifyUrl(ctx.base, url));
  } catch {
    ctx.log.warn({ from }, 'dify file url unusable, skipped');
    return;
  }
  const key = `${absolute.origin}${absolute.pathname}`;
  if (state.files.has(key)) return;
  const file: DifyAnswerFile = { url: absolute.toString(), from };
  if (typeof raw.type === 'string') file.type = raw.type;
  if (typeof raw.mime_type === 'string') file.mimeType = raw.mime_type;
  if (typeof raw.filename === 'string') file.filename = raw.filename;
  state.files.set(key, file);
  ctx.req.onFile?.(file);
}

function errorCode(err: unknown): string {
  if (typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'string') return (err as { code: string }).code;
  return err instanceof Error ? err.message : String(err);
}
