// A local fake of the Dify Service API over real HTTP and real SSE, following the research spec
// (/work/shared/research/dify-api.md §8): Dify's validation order and literal error bodies, its
// envelopes per mode, pings, and the misbehaviours seen in the field (scenarios S1-S20).
//
// Pick a scenario per request, first match wins:
//   1. the queue: fake.enqueue('http_429', { name: 'slow', delayMs: 300 }, async (s) => { ... })
//   2. a magic prefix in the query (or the first string input): "[[scenario:slow+delay=300+crlf]] hi"
//      tokens joined by '+': a scenario name, framing flags (crlf, spaced, ids, split[=bytes], redis)
//      and key=value knobs (delay=ms, hang=ms, chunk=chars, status=n, code=str)
//   3. 'normal'
// `POST /v1/audio-to-text` takes multipart `file` + `user` with Dify's checks: speech-to-text off
// (the default; `speechToText: true` turns it on) is 400 speech_to_text_disabled, a part type other
// than audio/mp3|m4a|x-m4a|wav|amr|mpga is 415, over 30 MB 413; each accepted file is in `audioUploads`.
// `GET /v1/messages` lists a conversation's messages, 404 for one the user does not have (deleted or unknown).
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export type FakeDifyMode = 'chat' | 'agent-chat' | 'advanced-chat' | 'workflow' | 'completion' | 'agent';

export const SCENARIOS = [
  'normal', 'slow', 'llm_error', 'error_null', 'gone_http', 'gone_suffixed', 'gone_stream', 'gone_hang',
  'http_429', 'http_500', 'provider_error', 'moderation', 'direct_output', 'message_file', 'message_file_relative',
  'markdown_image', 'no_message_end', 'no_workflow_finished', 'reversed_terminal', 'no_terminal', 'empty',
  'disconnect', 'think', 'think_details', 'tts', 'workflow_failed', 'unknown_event', 'hang',
] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

/** How frames are written (S20 CRLF, spaced json.dumps vs compact orjson, `id:` lines, split TCP writes). */
export interface Framing {
  json?: 'compact' | 'spaced';
  crlf?: boolean;
  ids?: boolean;
  /** Bytes per TCP write (0: one write per frame); splits land inside multi-byte characters. */
  split?: number;
  /** legacy: first ping after one interval; redis: a ping at once, then every interval. */
  pingMode?: 'legacy' | 'redis';
}

export interface Scenario extends Framing {
  name: ScenarioName;
  answer?: string;
  /** Gap (pings only) before the answer text. */
  delayMs?: number;
  chunkSize?: number;
  chunkDelayMs?: number;
  /** How long a hang lasts before the fake closes the stream. */
  hangMs?: number;
  status?: number;
  code?: string;
  message?: string;
  /** `message_replace` text for `moderation` (default: the full answer, unchanged). */
  replacement?: string;
}

/** A hand-written stream; gets the request and writes events. */
export type FakeScript = (s: FakeStream) => Promise<void>;

export interface FakeStream {
  readonly mode: FakeDifyMode;
  readonly body: Record<string, unknown>;
  readonly user: string;
  readonly query: string;
  readonly conversationId: string;
  readonly messageId: string;
  readonly taskId: string;
  readonly workflowRunId: string;
  readonly stopped: boolean;
  readonly closed: boolean;
  /** Writes an event with the envelope of the app mode (error events lose `task_id`, as Dify's do). */
  emit(event: string, fields?: Record<string, unknown>): Promise<void>;
  /** Writes `data: <json>` exactly as given. */
  data(json: Record<string, unknown>): Promise<void>;
  ping(): Promise<void>;
  raw(bytes: string | Buffer): Promise<void>;
  /** Waits, returning early when the client left or the task was stopped. */
  sleep(ms: number): Promise<void>;
  /** Abrupt TCP close. */
  destroy(): void;
}

export interface FakeDifyOptions {
  apiKey?: string;
  mode?: FakeDifyMode;
  appName?: string;
  acceptsImages?: boolean;
  /** Transfer methods the app allows for images (`/parameters` and the check of `files[]`). */
  imageTransferMethods?: string[];
  pingIntervalMs?: number;
  answer?: string | ((query: string) => string);
  /** Delay before the answer text of a normal stream (pings meanwhile). */
  answerDelayMs?: number;
  chunkSize?: number;
  chunkDelayMs?: number;
  queryVariable?: string;
  outputVariable?: string;
  /** 0 is unlimited. */
  maxActiveRequests?: number;
  /** How an unknown/deleted conversation_id fails (§4.4): 404, 404 with suffix, in-stream error, or a hang. */
  unknownConversation?: 'http' | 'suffixed' | 'stream_error' | 'hang';
  hangMs?: number;
  filesTtlMs?: number;
  framing?: Framing;
  /** Whether the app has speech-to-text on (`/parameters` and `/audio-to-text`). */
  speechToText?: boolean;
  /** What `/audio-to-text` answers. */
  transcript?: string | ((audio: Buffer, contentType: string) => string);
  /**
   * Keep every request in `requests` (default). The bench turns it off: tens of thousands of
   * records, each with its headers and parsed body, only grow the fake's heap and its GC.
   */
  recordRequests?: boolean;
}

/** A file `/audio-to-text` accepted. */
export interface AudioUpload {
  user: string;
  contentType: string;
  filename: string;
  bytes: Buffer;
}

export interface RecordedRequest {
  method: string;
  path: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: unknown;
  at: number;
  scenario?: ScenarioName | 'script';
  status?: number;
  /** The client closed the connection before the fake finished the response. */
  clientClosed: boolean;
  finished: boolean;
}

export interface FakeDify {
  readonly baseUrl: string;
  readonly origin: string;
  readonly apiKey: string;
  readonly options: Required<Omit<FakeDifyOptions, 'answer'>> & Pick<FakeDifyOptions, 'answer'>;
  readonly requests: RecordedRequest[];
  readonly stops: Array<{ path: string; taskId: string; user: unknown }>;
  readonly audioUploads: AudioUpload[];
  readonly stopCount: number;
  /** Requests to the three run routes. */
  runRequests(): RecordedRequest[];
  /** Task ids of the streams still running. */
  runningTaskIds(): string[];
  configure(patch: Partial<FakeDifyOptions>): void;
  enqueue(...items: Array<ScenarioName | Scenario | FakeScript>): void;
  script(fn: FakeScript): void;
  /**
   * Serves a file at a signed, relative `/files/tools/<uuid>.<ext>?timestamp=…&sign=…` URL (as a
   * tool file of self-hosted Dify) until `filesTtlMs` passes; a 1x1 PNG unless `bytes` are given.
   */
  serveFile(ext?: string, body?: { bytes: Buffer; contentType: string }): string;
  /** Creates a conversation for `user` (as if an earlier turn had happened). */
  createConversation(user: string): string;
  deleteConversation(user: string, id: string): void;
  conversationIds(user: string): string[];
  close(): Promise<void>;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const PREFIX_RE = /^\s*\[\[scenario:([^\]]*)\]\]\s*/;
const CHAT_FAMILY = new Set<FakeDifyMode>(['chat', 'agent-chat', 'advanced-chat', 'agent']);
const ROUTE_MISMATCH = 'Please check if your app mode matches the right API route.';
const WERKZEUG_404 = 'The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.';
const WERKZEUG_500 = 'The server encountered an internal error and was unable to complete your request. Either the server is overloaded or there is an error in the application.';
const PROVIDER_MESSAGES: Record<string, string> = {
  provider_not_initialize: 'No valid model provider credentials found. Please go to Settings -> Model Provider to complete your provider credentials.',
  provider_quota_exceeded: 'Your quota for Dify Hosted OpenAI has been exhausted. Please go to Settings -> Model Provider to complete your own provider credentials.',
  model_currently_not_support: 'Dify Hosted OpenAI trial currently not support the GPT-4 model.',
  completion_request_error: 'Completion request failed.',
  app_unavailable: 'App unavailable, please check your app configurations.',
};
/** Part types `/audio-to-text` accepts (audio/mpeg is refused, dify-api.md §5.2). */
const AUDIO_TYPES = new Set(['audio/mp3', 'audio/m4a', 'audio/x-m4a', 'audio/wav', 'audio/amr', 'audio/mpga']);
const PNG_1X1 = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=', 'base64');

class HttpFail extends Error {
  constructor(readonly status: number, readonly code: string, override readonly message: string) {
    super(message);
  }
}

interface Task { user: string; stop(): void }
interface Conversation { id: string; inputs: unknown; deleted: boolean; messages: Array<{ id: string; conversation_id: string; query: string; created_at: number }> }

/** Starts a fake Dify on 127.0.0.1 with a free port; `baseUrl` ends in `/v1`. */
export async function startFakeDify(opts: FakeDifyOptions = {}): Promise<FakeDify> {
  const options: FakeDify['options'] = {
    apiKey: 'app-fake-dify-key', mode: 'chat', appName: 'Fake Dify', acceptsImages: false, imageTransferMethods: ['remote_url', 'local_file'],
    pingIntervalMs: 10_000, answerDelayMs: 0, chunkSize: 4, chunkDelayMs: 0, queryVariable: 'query',
    outputVariable: 'answer', maxActiveRequests: 0, unknownConversation: 'http', hangMs: 300_000,
    filesTtlMs: 300_000, framing: {}, speechToText: false, transcript: 'transcribed voice', recordRequests: true, ...opts,
  };
  const audioUploads: AudioUpload[] = [];
  const requests: RecordedRequest[] = [];
  const stops: Array<{ path: string; taskId: string; user: unknown }> = [];
  const queue: Array<Scenario | FakeScript> = [];
  const conversations = new Map<string, Map<string, Conversation>>();
  const tasks = new Map<string, Task>();
  const served = new Map<string, number>();
  const fileBodies = new Map<string, { bytes: Buffer; contentType: string }>();
  const closing = new AbortController();
  let active = 0;
  let origin = '';

  const convs = (user: string): Map<string, Conversation> => {
    const key = `${options.apiKey}\n${user}`;
    let m = conversations.get(key);
    if (!m) conversations.set(key, (m = new Map()));
    return m;
  };
  const serveFile = (ext: string, body?: { bytes: Buffer; contentType: string }): string => {
    const path = `/files/tools/${randomUUID()}.${ext}`;
    served.set(path, Date.now() + options.filesTtlMs);
    if (body) fileBodies.set(path, body);
    const ts = Math.floor(Date.now() / 1000);
    return `${path}?timestamp=${ts}&nonce=${randomBytes(16).toString('hex')}&sign=${randomBytes(32).toString('base64url')}=`;
  };

  const server = createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendError(res, new HttpFail(500, 'internal_server_error', WERKZEUG_500));
      else res.destroy(err as Error);
    });
  });
  server.on('connection', (socket) => socket.setNoDelay(true));

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    const rec: RecordedRequest = {
      method: req.method ?? 'GET', path: url.pathname, url: req.url ?? '/', headers: req.headers,
      body: undefined, at: Date.now(), clientClosed: false, finished: false,
    };
    if (options.recordRequests) {
      requests.push(rec);
      res.on('finish', () => { rec.finished = true; });
      res.on('close', () => {
        rec.status = res.statusCode;
        if (!res.writableFinished) rec.clientClosed = true;
      });
    }
    const bytes = await readBody(req);
    const raw = bytes.toString('utf8');
    if (options.recordRequests) rec.body = raw.length > 0 && !isMultipart(req) ? tryJson(raw) : undefined;
    try {
      await route(req, res, url, raw, rec, bytes);
    } catch (err) {
      if (!(err instanceof HttpFail)) throw err;
      rec.status = err.status;
      sendError(res, err);
    }
  }

  async function route(req: IncomingMessage, res: ServerResponse, url: URL, raw: string, rec: RecordedRequest, bytes: Buffer): Promise<void> {
    const p = url.pathname;
    const m = req.method ?? 'GET';
    if (m === 'GET' && p.startsWith('/files/')) return sendFile(res, p);
    if (!p.startsWith('/v1/')) throw new HttpFail(404, 'not_found', WERKZEUG_404);
    const sub = p.slice(3);
    let match: RegExpExecArray | null;
    if (m === 'POST' && (sub === '/chat-messages' || sub === '/completion-messages' || sub === '/workflows/run')) {
      authenticate(req);
      return run(req, res, sub, parseJson(req, raw), rec);
    }
    if (m === 'POST' && (match = /^\/(chat-messages|completion-messages|workflows\/tasks)\/([^/]+)\/stop$/.exec(sub))) {
      authenticate(req);
      return stop(res, p, match[2] ?? '', parseJson(req, raw), match[1] === 'workflows/tasks');
    }
    if (m === 'GET' && sub === '/info') {
      authenticate(req);
      return sendJson(res, 200, { name: options.appName, description: 'A fake Dify app', tags: [], mode: options.mode, author_name: 'Fake' });
    }
    if (m === 'GET' && sub === '/parameters') {
      authenticate(req);
      return sendJson(res, 200, parameters(options.mode, options.acceptsImages, options.speechToText, options.imageTransferMethods));
    }
    if (m === 'POST' && sub === '/audio-to-text') {
      authenticate(req);
      return audioToText(req, res, bytes, rec);
    }
    if (m === 'GET' && sub === '/messages') {
      authenticate(req);
      return listMessages(res, url);
    }
    if (m === 'DELETE' && (match = /^\/conversations\/([^/]+)$/.exec(sub))) {
      const id = match[1] ?? '';
      if (!UUID_RE.test(id)) throw new HttpFail(404, 'not_found', WERKZEUG_404);
      authenticate(req);
      const user = requireUser(parseJson(req, raw));
      const conv = convs(user).get(id);
      if (!conv || conv.deleted) throw new HttpFail(404, 'not_found', 'Conversation Not Exists.');
      conv.deleted = true;
      res.writeHead(204).end();
      return;
    }
    throw new HttpFail(404, 'not_found', WERKZEUG_404);
  }

  function authenticate(req: IncomingMessage): void {
    const header = req.headers.authorization;
    if (!header || !header.includes(' ')) {
      throw new HttpFail(401, 'unauthorized', "Authorization header must be provided and start with 'Bearer'");
    }
    const [scheme, token] = header.split(/\s+/, 2);
    if (scheme?.toLowerCase() !== 'bearer') throw new HttpFail(401, 'unauthorized', "Authorization scheme must be 'Bearer'");
    if (token !== options.apiKey) throw new HttpFail(401, 'unauthorized', 'Access token is invalid');
  }

  /**
   * `GET /messages?conversation_id&user&limit`, newest first: user from the query string, chat modes
   * only, and 404 "Conversation Not Exists." for a conversation this user does not have (dify-api.md §5.6).
   */
  function listMessages(res: ServerResponse, url: URL): void {
    const user = url.searchParams.get('user');
    if (!user) throw new HttpFail(400, 'invalid_param', 'Arg user must be provided.');
    if (!CHAT_FAMILY.has(options.mode)) throw new HttpFail(400, 'not_chat_app', ROUTE_MISMATCH);
    const id = url.searchParams.get('conversation_id');
    if (!id) throw new HttpFail(400, 'invalid_param', 'conversation_id is required');
    const conv = convs(user).get(id);
    if (!conv || conv.deleted) throw new HttpFail(404, 'not_found', 'Conversation Not Exists.');
    const limit = Math.min(100, Math.max(1, Number(url.searchParams.get('limit') ?? 20) || 20));
    const newestFirst = [...conv.messages].reverse();
    sendJson(res, 200, { limit, has_more: newestFirst.length > limit, data: newestFirst.slice(0, limit) });
  }

  /** Dify's AudioService order: user, feature switch, file present, part type, size. */
  async function audioToText(req: IncomingMessage, res: ServerResponse, bytes: Buffer, rec: RecordedRequest): Promise<void> {
    const form = await new Response(new Uint8Array(bytes), { headers: { 'content-type': req.headers['content-type'] ?? '' } })
      .formData()
      .catch(() => new FormData());
    const user = form.get('user');
    const file = form.get('file');
    rec.body = { user, file: file instanceof File ? { name: file.name, type: file.type, size: file.size } : null };
    if (typeof user !== 'string' || user === '') throw new HttpFail(400, 'invalid_param', 'Arg user must be provided.');
    if (!options.speechToText) throw new HttpFail(400, 'speech_to_text_disabled', 'Speech to text is not enabled');
    if (!(file instanceof File)) throw new HttpFail(400, 'no_audio_uploaded', 'Please upload your audio.');
    if (!AUDIO_TYPES.has(file.type.toLowerCase())) throw new HttpFail(415, 'unsupported_audio_type', 'Audio type not allowed.');
    if (file.size > 30 * 1024 * 1024) throw new HttpFail(413, 'audio_too_large', 'Audio size larger than 30 mb');
    const audio = Buffer.from(await file.arrayBuffer());
    audioUploads.push({ user, contentType: file.type, filename: file.name, bytes: audio });
    const t = options.transcript;
    sendJson(res, 200, { text: typeof t === 'function' ? t(audio, file.type) : t });
  }

  function stop(res: ServerResponse, path: string, taskId: string, body: Record<string, unknown>, workflow: boolean): void {
    const user = requireUser(body);
    stops.push({ path, taskId, user });
    const task = tasks.get(taskId);
    // the chat-family stop silently does nothing for another user; the workflow stop does not check
    if (task && (workflow || task.user === user)) task.stop();
    sendJson(res, 200, { result: 'success' });
  }

  async function run(req: IncomingMessage, res: ServerResponse, sub: string, body: Record<string, unknown>, rec: RecordedRequest): Promise<void> {
    const mode = options.mode;
    const user = requireUser(body);
    const payload = sub === '/chat-messages' ? 'ChatRequestPayload' : sub === '/workflows/run' ? 'WorkflowRunPayload' : 'CompletionRequestPayload';
    if (sub === '/chat-messages' && !CHAT_FAMILY.has(mode)) throw new HttpFail(400, 'not_chat_app', ROUTE_MISMATCH);
    if (sub === '/completion-messages' && mode !== 'completion') throw new HttpFail(400, 'app_unavailable', PROVIDER_MESSAGES.app_unavailable ?? '');
    if (sub === '/workflows/run' && mode !== 'workflow') throw new HttpFail(400, 'not_workflow_app', ROUTE_MISMATCH);
    validateSchema(payload, body, sub === '/chat-messages');
    const streaming = body.response_mode === 'streaming';
    if (sub === '/chat-messages' && (typeof body.query !== 'string' || body.query.trim() === '')) {
      throw new HttpFail(400, 'invalid_param', 'query is required');
    }
    checkFiles(body.files);
    if (!streaming && mode === 'agent-chat') throw new HttpFail(400, 'invalid_param', 'Agent Chat App does not support blocking mode');
    if (!streaming && mode === 'agent') throw new HttpFail(400, 'bad_request', 'Agent App only supports streaming response mode.');
    if (options.maxActiveRequests > 0 && active >= options.maxActiveRequests) throw tooMany(options.maxActiveRequests);

    const rawQuery = queryOf(body, sub === '/chat-messages');
    const picked = pickScenario(rawQuery);
    const sc = picked.scenario;
    rec.scenario = typeof sc === 'function' ? 'script' : sc.name;
    const sentConversation = sub === '/chat-messages' && typeof body.conversation_id === 'string' && body.conversation_id.trim() !== ''
      ? body.conversation_id : undefined;
    // a queued scenario is used up only by a request it decides: a stale conversation fails on its own
    if (typeof sc !== 'function' && failsBeforeStream(sc.name)) {
      picked.take();
      failBeforeStream(sc);
    }
    let conversationId = '';
    let gone: 'http' | 'suffixed' | 'stream_error' | 'hang' | undefined;
    if (CHAT_FAMILY.has(mode) && sentConversation !== undefined) {
      const conv = convs(user).get(sentConversation);
      const scripted = typeof sc === 'function' ? undefined : goneVariant(sc.name);
      const natural = !conv || conv.deleted ? options.unknownConversation : undefined;
      if (scripted || !natural) picked.take();
      // a scripted loss is a real one: GET /messages must not find the conversation either
      if (scripted && conv) conv.deleted = true;
      gone = scripted ?? natural;
      if (gone === 'http') throw new HttpFail(404, 'not_found', 'Conversation Not Exists.');
      if (gone === 'suffixed') throw new HttpFail(404, 'not_found', suffixed(sub));
      conversationId = sentConversation;
    } else {
      picked.take();
      if (CHAT_FAMILY.has(mode)) {
        conversationId = randomUUID();
        convs(user).set(conversationId, { id: conversationId, inputs: body.inputs, deleted: false, messages: [] });
      }
    }
    if (!streaming) return answerBlocking(res, mode, conversationId, picked.query);

    const framing: Framing = { ...options.framing, ...(typeof sc === 'function' ? {} : stripName(sc)) };
    const s = openStream(res, mode, framing, { body, user, query: picked.query, conversationId });
    tasks.set(s.taskId, { user, stop: () => s.markStopped() });
    convs(user).get(conversationId)?.messages.push({ id: s.messageId, conversation_id: conversationId, query: picked.query, created_at: now() });
    active++;
    try {
      if (typeof sc === 'function') await sc(s);
      else if (gone === 'stream_error') await s.emit('error', { status: 400, code: 'invalid_param', message: null });
      else if (gone === 'hang') await s.sleep(sc.hangMs ?? options.hangMs);
      else await playScenario(s, sc);
    } finally {
      active--;
      tasks.delete(s.taskId);
      await s.end();
    }
  }

  /**
   * Files are silently ignored when the app takes none; otherwise a transfer method its upload config
   * does not list fails the request (file_factory `_is_file_valid_with_config`, a ValueError: 400).
   */
  function checkFiles(files: unknown): void {
    if (!options.acceptsImages || !Array.isArray(files)) return;
    for (const f of files as Array<Record<string, unknown>>) {
      if (options.imageTransferMethods.includes(String(f.transfer_method))) continue;
      const name = typeof f.url === 'string' ? new URL(f.url, 'http://x').pathname.split('/').pop() : f.upload_file_id;
      throw new HttpFail(400, 'invalid_param', `File validation failed for file: ${String(name)}`);
    }
  }

  function pickScenario(rawQuery: string): { scenario: Scenario | FakeScript; query: string; take: () => void } {
    const queued = queue[0];
    const m = PREFIX_RE.exec(rawQuery);
    const query = m ? rawQuery.slice(m[0].length) : rawQuery;
    let taken = false;
    const take = (): void => {
      if (queued && !taken && queue[0] === queued) queue.shift();
      taken = true;
    };
    if (queued) return { scenario: queued, query, take };
    if (m) return { scenario: parsePrefix(m[1] ?? ''), query, take };
    return { scenario: { name: 'normal' }, query, take };
  }

  function failsBeforeStream(name: ScenarioName): boolean {
    return name === 'http_429' || name === 'http_500' || name === 'provider_error';
  }

  function failBeforeStream(sc: Scenario): void {
    if (sc.name === 'http_429') throw tooMany(1);
    if (sc.name === 'http_500') throw new HttpFail(sc.status ?? 500, sc.code ?? 'internal_server_error', sc.message ?? WERKZEUG_500);
    if (sc.name === 'provider_error') {
      const code = sc.code ?? 'provider_not_initialize';
      throw new HttpFail(sc.status ?? 400, code, sc.message ?? PROVIDER_MESSAGES[code] ?? 'Provider error.');
    }
  }

  function answerText(query: string, sc: Scenario): string {
    if (sc.answer !== undefined) return sc.answer;
    const a = options.answer;
    if (typeof a === 'function') return a(query);
    return a ?? `Echo: ${query}`;
  }

  /** The built-in scenarios: the per-mode scripts of §8.3 with the §8.4 deviations. */
  async function playScenario(s: Stream, sc: Scenario): Promise<void> {
    const n = sc.name;
    const mode = s.mode;
    const wf = mode === 'workflow' || mode === 'advanced-chat';
    const delay = sc.delayMs ?? (n === 'slow' ? options.pingIntervalMs * 3 : options.answerDelayMs);
    if (n === 'hang' || n === 'gone_hang') return s.sleep(sc.hangMs ?? options.hangMs);
    if (n === 'empty') return s.sleep(delay);
    if (n === 'error_null' || n === 'gone_stream') {
      return s.emit('error', { status: 400, code: 'invalid_param', message: null });
    }
    let text = answerText(s.query, sc);
    if (n === 'think') text = `<think>\nThe user greets me.\n</think>\n\n${text}`;
    if (n === 'think_details') text = `<details style="color:gray;background-color: #f8f8f8;padding: 8px;border-radius: 4px;" open> <summary> Thinking... </summary>The user greets me.\n</details>${text}`;
    if (n === 'markdown_image') text = `${text}\n\n![cat.png](${serveFile('png')})`;
    const size = n === 'direct_output' ? 1 : sc.chunkSize ?? options.chunkSize;
    const chunkDelay = n === 'direct_output' ? 10 : sc.chunkDelayMs ?? options.chunkDelayMs;
    const chunks = chunk(text, size);

    if (wf) {
      await s.emit('workflow_started', { workflow_run_id: s.workflowRunId, data: { id: s.workflowRunId, workflow_id: randomUUID(), inputs: { 'sys.query': s.query, 'sys.user_id': s.user }, created_at: now(), reason: 'initial' } });
      await s.emit('node_started', { workflow_run_id: s.workflowRunId, data: node('llm', 'running') });
    }
    const thoughtId = randomUUID();
    if (mode === 'agent-chat' || mode === 'agent') await s.emit('agent_thought', thought(thoughtId, ''));
    await s.sleep(delay);
    if (n === 'workflow_failed' && wf) return failWorkflow(s);

    const fileUrl = n === 'message_file' ? `${origin}${serveFile('png')}` : n === 'message_file_relative' ? serveFile('png') : undefined;
    let sent = '';
    for (const [i, part] of chunks.entries()) {
      if (s.stopped || s.closed) break;
      if (fileUrl && i === Math.ceil(chunks.length / 2) && mode !== 'workflow') {
        await s.emit('message_file', { id: randomUUID(), type: 'image', belongs_to: 'assistant', url: fileUrl });
      }
      // after a file, Dify tags later text chunks as message_file (message_cycle_manager, #36990)
      const asFile = fileUrl !== undefined && i >= Math.ceil(chunks.length / 2) && mode !== 'workflow';
      await emitText(s, part, asFile);
      sent += part;
      if (n === 'unknown_event' && i === 0) {
        await s.emit('future_thing', { data: { hello: 'world' } });
        await s.emit('parallel_branch_started', { data: { parallel_id: 'p1', parallel_branch_id: 'b1', created_at: now() } });
      }
      if ((n === 'llm_error' || (n === 'workflow_failed' && !wf)) && i === 0) {
        return s.emit('error', { status: 400, code: 'completion_request_error', message: '[openai] Error: Rate limit reached for gpt-4o' });
      }
      if (n === 'disconnect' && i === 1) {
        await sleep(30); // let the client read what came before, as a network gap would
        await s.raw('data: {"event":"message","answer":"never fin');
        return s.destroy();
      }
      await s.sleep(chunkDelay);
    }
    if (n === 'no_terminal') return;
    if (mode === 'agent-chat' || mode === 'agent') await s.emit('agent_thought', thought(thoughtId, sent));
    if (mode === 'agent' && !s.stopped) await s.emit('message', { id: s.messageId, answer: sent, from_variable_selector: null });
    if (n === 'moderation') await s.emit('message_replace', { answer: sc.replacement ?? sent, reason: 'output_moderation' });
    if (n === 'tts') {
      await s.emit('tts_message', { audio: PNG_1X1.toString('base64') });
      await s.emit('tts_message', { audio: PNG_1X1.toString('base64') });
    }
    await terminals(s, n, sent, fileUrl);
    if (n === 'tts') await s.emit('tts_message_end', { audio: '' });
  }

  async function terminals(s: Stream, n: ScenarioName, text: string, fileUrl: string | undefined): Promise<void> {
    const mode = s.mode;
    const stopped = s.stopped;
    const end = (): Promise<void> => s.emit('message_end', { id: s.messageId, metadata: { usage: usage() }, files: null });
    const outputs: Record<string, unknown> = mode === 'workflow' ? { [options.outputVariable]: text } : { answer: text };
    if (fileUrl && mode === 'workflow') outputs.files = [fileObject(fileUrl)];
    const finished = (): Promise<void> => s.emit('workflow_finished', {
      workflow_run_id: s.workflowRunId,
      data: { id: s.workflowRunId, workflow_id: randomUUID(), status: stopped ? 'stopped' : 'succeeded', outputs, error: null,
        elapsed_time: 1.25, total_tokens: 42, total_steps: 3, created_by: { id: randomUUID(), user: s.user },
        created_at: now(), finished_at: now(), exceptions_count: 0, files: [] },
    });
    if (mode === 'workflow' || mode === 'advanced-chat') {
      await s.emit('node_finished', { workflow_run_id: s.workflowRunId, data: node('llm', 'succeeded', { text }) });
    }
    if (mode === 'workflow') {
      if (n !== 'no_workflow_finished') await finished();
      return;
    }
    if (mode !== 'advanced-chat') {
      if (n !== 'no_message_end') await end();
      return;
    }
    if (n === 'reversed_terminal') {
      await finished();
      return end();
    }
    if (n !== 'no_message_end') await end();
    if (n !== 'no_workflow_finished') await finished();
  }

  async function failWorkflow(s: Stream): Promise<void> {
    const error = 'Node LLM run failed: [openai] Error: Incorrect API key provided';
    await s.emit('node_finished', { workflow_run_id: s.workflowRunId, data: node('llm', 'failed', null, error) });
    await s.emit('workflow_finished', {
      workflow_run_id: s.workflowRunId,
      data: { id: s.workflowRunId, workflow_id: randomUUID(), status: 'failed', outputs: null, error, elapsed_time: 0.5,
        total_tokens: 0, total_steps: 2, created_at: now(), finished_at: now(), exceptions_count: 0, files: [] },
    });
    // chatflow adds a trailing error and no message_end
    if (s.mode === 'advanced-chat') await s.emit('error', { status: 400, code: 'invalid_param', message: error });
  }

  async function emitText(s: Stream, text: string, asFile: boolean): Promise<void> {
    if (s.mode === 'workflow') {
      return s.emit('text_chunk', { workflow_run_id: s.workflowRunId, data: { text, from_variable_selector: ['end', options.outputVariable] } });
    }
    if (asFile) return s.emit('message_file', { id: s.messageId, answer: text, from_variable_selector: null });
    if (s.mode === 'agent-chat' || s.mode === 'agent') return s.emit('agent_message', { id: s.messageId, answer: text });
    const selector = s.mode === 'advanced-chat' ? ['llm', 'text'] : null;
    return s.emit('message', { id: s.messageId, answer: text, from_variable_selector: selector });
  }

  function answerBlocking(res: ServerResponse, mode: FakeDifyMode, conversationId: string, query: string): void {
    const text = answerText(query, { name: 'normal' });
    const taskId = randomUUID();
    const id = randomUUID();
    if (mode === 'workflow') {
      return sendJson(res, 200, { task_id: taskId, workflow_run_id: id, data: { id, workflow_id: randomUUID(), status: 'succeeded',
        outputs: { [options.outputVariable]: text }, error: null, elapsed_time: 1.2, total_tokens: 42, total_steps: 3, created_at: now(), finished_at: now() } });
    }
    sendJson(res, 200, { event: 'message', task_id: taskId, id, message_id: id,
      ...(mode === 'completion' ? {} : { conversation_id: conversationId }), mode, answer: text,
      metadata: { usage: usage() }, created_at: now() });
  }

  function sendFile(res: ServerResponse, path: string): void {
    const expires = served.get(path);
    if (expires === undefined) return sendError(res, new HttpFail(404, 'not_found', WERKZEUG_404));
    if (Date.now() > expires) return sendError(res, new HttpFail(403, 'forbidden', 'Invalid request.'));
    const { bytes, contentType } = fileBodies.get(path) ?? { bytes: PNG_1X1, contentType: 'image/png' };
    res.writeHead(200, { 'content-type': contentType, 'content-length': bytes.length }).end(bytes);
  }

  function openStream(res: ServerResponse, mode: FakeDifyMode, framing: Framing, req: { body: Record<string, unknown>; user: string; query: string; conversationId: string }): Stream {
    return new Stream(res, mode, framing, options.pingIntervalMs, closing.signal, req);
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    baseUrl: `${origin}/v1`,
    origin,
    get apiKey() { return options.apiKey; },
    options,
    requests,
    stops,
    audioUploads,
    get stopCount() { return stops.length; },
    runRequests: () => requests.filter((r) => r.method === 'POST' && /^\/v1\/(chat-messages|completion-messages|workflows\/run)$/.test(r.path)),
    runningTaskIds: () => [...tasks.keys()],
    configure: (patch) => { Object.assign(options, patch); },
    enqueue: (...items) => {
      for (const item of items) queue.push(typeof item === 'string' ? { name: item } : item);
    },
    script: (fn) => { queue.push(fn); },
    serveFile: (ext = 'png', body) => serveFile(ext, body),
    createConversation: (user) => {
      const id = randomUUID();
      convs(user).set(id, { id, inputs: {}, deleted: false, messages: [] });
      return id;
    },
    deleteConversation: (user, id) => {
      const conv = convs(user).get(id);
      if (conv) conv.deleted = true;
    },
    conversationIds: (user) => [...convs(user).values()].filter((c) => !c.deleted).map((c) => c.id),
    close: async () => {
      closing.abort();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Why a stream's `gone` signal aborted (the client closed the response). */
const STREAM_GONE = 'client closed the stream';

/** One SSE response: envelopes per mode, serialized writes (pings never cut a frame), framing switches. */
class Stream implements FakeStream {
  readonly conversationId: string;
  readonly messageId = randomUUID();
  readonly taskId = randomUUID();
  readonly workflowRunId = randomUUID();
  readonly body: Record<string, unknown>;
  readonly user: string;
  readonly query: string;
  private readonly createdAt = now();
  private readonly gone = new AbortController();
  private readonly ticker: NodeJS.Timeout;
  private chain: Promise<void> = Promise.resolve();
  private seq = 0;
  private isStopped = false;
  private readonly stopCtl = new AbortController();

  constructor(
    private readonly res: ServerResponse,
    readonly mode: FakeDifyMode,
    private readonly framing: Framing,
    pingIntervalMs: number,
    closing: AbortSignal,
    req: { body: Record<string, unknown>; user: string; query: string; conversationId: string },
  ) {
    this.body = req.body;
    this.user = req.user;
    this.query = req.query;
    this.conversationId = req.conversationId;
    // a plain reason: abort() without one builds a DOMException, with its stack, per response
    res.on('close', () => this.gone.abort(STREAM_GONE));
    closing.addEventListener('abort', () => this.destroy(), { once: true, signal: this.gone.signal });
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' });
    res.flushHeaders();
    if (framing.pingMode === 'redis') void this.ping();
    this.ticker = setInterval(() => void this.ping(), pingIntervalMs);
  }

  get stopped(): boolean { return this.isStopped; }
  get closed(): boolean { return this.gone.signal.aborted; }

  markStopped(): void {
    this.isStopped = true;
    this.stopCtl.abort();
  }

  emit(event: string, fields: Record<string, unknown> = {}): Promise<void> {
    return this.data({ event, ...this.envelope(event), ...fields });
  }

  data(json: Record<string, unknown>): Promise<void> {
    const nl = this.framing.crlf ? '\r\n' : '\n';
    const body = this.framing.json === 'spaced' ? dumpsPython(json) : JSON.stringify(json);
    const id = this.framing.ids ? `id: ${Date.now()}-${this.seq++}${nl}` : '';
    return this.raw(`${id}data: ${body}${nl}${nl}`);
  }

  ping(): Promise<void> {
    const nl = this.framing.crlf ? '\r\n' : '\n';
    return this.raw(`event: ping${nl}${nl}`);
  }

  raw(bytes: string | Buffer): Promise<void> {
    const buf = typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes;
    const step = this.framing.split && this.framing.split > 0 ? this.framing.split : buf.length;
    this.chain = this.chain.then(async () => {
      for (let i = 0; i < buf.length && !this.closed; i += step) {
        this.res.write(buf.subarray(i, i + step));
        if (step < buf.length) await sleep(1); // separate TCP segments (setNoDelay is on)
      }
    });
    return this.chain;
  }

  async sleep(ms: number): Promise<void> {
    if (ms <= 0 || this.closed) return;
    await sleep(ms, undefined, { signal: AbortSignal.any([this.gone.signal, this.stopCtl.signal]) }).catch(() => undefined);
  }

  destroy(): void {
    clearInterval(this.ticker);
    this.res.destroy();
  }

  async end(): Promise<void> {
    clearInterval(this.ticker);
    await this.chain;
    if (!this.closed && !this.res.destroyed) this.res.end();
  }

  private envelope(event: string): Record<string, unknown> {
    const task = event === 'error' ? {} : { task_id: this.taskId };
    if (this.mode === 'workflow') return { workflow_run_id: this.workflowRunId, ...task };
    if (this.mode === 'completion') return { message_id: this.messageId, created_at: this.createdAt, ...task };
    return { conversation_id: this.conversationId, message_id: this.messageId, created_at: this.createdAt, ...task };
  }
}

function parsePrefix(spec: string): Scenario {
  const sc: Scenario = { name: 'normal' };
  for (const token of spec.split('+').map((t) => t.trim()).filter(Boolean)) {
    const [key = '', value] = token.split('=', 2);
    const num = value === undefined ? undefined : Number(value);
    if (value === undefined && (SCENARIOS as readonly string[]).includes(key)) sc.name = key as ScenarioName;
    else if (key === 'crlf') sc.crlf = true;
    else if (key === 'spaced') sc.json = 'spaced';
    else if (key === 'ids') sc.ids = true;
    else if (key === 'redis') sc.pingMode = 'redis';
    else if (key === 'split') sc.split = num ?? 5;
    else if (key === 'delay') sc.delayMs = num;
    else if (key === 'hang') sc.hangMs = num;
    else if (key === 'chunk') sc.chunkSize = num;
    else if (key === 'status') sc.status = num;
    else if (key === 'code') sc.code = value;
    else throw new HttpFail(400, 'invalid_param', `fake dify: unknown scenario token ${token}`);
  }
  return sc;
}

function stripName(sc: Scenario): Framing {
  const f: Framing = {};
  if (sc.json !== undefined) f.json = sc.json;
  if (sc.crlf !== undefined) f.crlf = sc.crlf;
  if (sc.ids !== undefined) f.ids = sc.ids;
  if (sc.split !== undefined) f.split = sc.split;
  if (sc.pingMode !== undefined) f.pingMode = sc.pingMode;
  return f;
}

function goneVariant(name: ScenarioName): 'http' | 'suffixed' | 'stream_error' | 'hang' | undefined {
  if (name === 'gone_http') return 'http';
  if (name === 'gone_suffixed') return 'suffixed';
  if (name === 'gone_stream') return 'stream_error';
  if (name === 'gone_hang') return 'hang';
  return undefined;
}

function suffixed(sub: string): string {
  return `Conversation Not Exists. You have requested this URI [/v1${sub}] but did you mean /v1${sub} or /api${sub} or /v1${sub}/<string:task_id>/stop ?`;
}

function tooMany(n: number): HttpFail {
  return new HttpFail(429, 'too_many_requests', `Too many requests. Please try again later. The current maximum concurrent requests allowed is ${n}.`);
}

function requireUser(body: Record<string, unknown>): string {
  if (typeof body.user !== 'string' || body.user === '') throw new HttpFail(400, 'invalid_param', 'Arg user must be provided.');
  return body.user;
}

function validateSchema(model: string, body: Record<string, unknown>, chat: boolean): void {
  const fail = (field: string, detail: string): never => {
    throw new HttpFail(400, 'invalid_param', `1 validation error for ${model}\n${field}\n  ${detail}`);
  };
  if (typeof body.inputs !== 'object' || body.inputs === null || Array.isArray(body.inputs)) {
    fail('inputs', `Field required [type=missing, input_value=${JSON.stringify(body)}, input_type=dict]`);
  }
  if (body.response_mode !== undefined && body.response_mode !== null && body.response_mode !== 'streaming' && body.response_mode !== 'blocking') {
    fail('response_mode', `Input should be 'blocking' or 'streaming' [type=literal_error, input_value='${String(body.response_mode)}', input_type=str]`);
  }
  const conv = body.conversation_id;
  if (chat && typeof conv === 'string' && conv.trim() !== '' && !UUID_RE.test(conv)) {
    fail('conversation_id', `Value error, conversation_id must be a valid UUID [type=value_error, input_value='${conv}', input_type=str]`);
  }
}

function queryOf(body: Record<string, unknown>, chat: boolean): string {
  if (typeof body.query === 'string' && (chat || PREFIX_RE.test(body.query))) return body.query;
  const inputs = (body.inputs ?? {}) as Record<string, unknown>;
  if (typeof inputs.query === 'string') return inputs.query;
  if (typeof body.query === 'string') return body.query;
  return Object.values(inputs).find((v): v is string => typeof v === 'string') ?? '';
}

function parseJson(req: IncomingMessage, raw: string): Record<string, unknown> {
  if (!(req.headers['content-type'] ?? '').includes('application/json')) {
    throw new HttpFail(415, 'unsupported_media_type', "Did not attempt to load JSON data because the request Content-Type was not 'application/json'.");
  }
  const body = raw.trim() === '' ? undefined : tryJson(raw);
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpFail(400, 'bad_request', 'Invalid JSON payload received or JSON payload is empty.');
  }
  return body as Record<string, unknown>;
}

function parameters(mode: FakeDifyMode, images: boolean, stt: boolean, methods: string[]): Record<string, unknown> {
  const workflowish = mode === 'workflow' || mode === 'advanced-chat';
  return {
    opening_statement: 'Hello!',
    suggested_questions: [],
    suggested_questions_after_answer: { enabled: false },
    speech_to_text: { enabled: stt },
    text_to_speech: { enabled: false, voice: '', language: '', autoPlay: 'disabled' },
    retriever_resource: { enabled: false },
    annotation_reply: { enabled: false },
    more_like_this: { enabled: false },
    sensitive_word_avoidance: { enabled: false },
    user_input_form: [{ 'text-input': { label: 'Query', variable: 'query', required: false, default: '' } }],
    file_upload: {
      image: { enabled: images && !workflowish, number_limits: 3, detail: 'high', transfer_methods: methods },
      ...(workflowish ? { enabled: images, allowed_file_types: images ? ['image'] : [], allowed_file_extensions: [],
        allowed_file_upload_methods: methods, number_limits: 3 } : {}),
    },
    system_parameters: { file_size_limit: 15, image_file_size_limit: 10, audio_file_size_limit: 50, video_file_size_limit: 100, workflow_file_upload_limit: 10 },
  };
}

function node(nodeId: string, status: string, outputs: Record<string, unknown> | null = null, error: string | null = null): Record<string, unknown> {
  return { id: randomUUID(), node_id: nodeId, node_type: 'llm', title: 'LLM', index: 2, predecessor_node_id: 'start', inputs: null,
    process_data: null, outputs, status, error, elapsed_time: 0.8, execution_metadata: { total_tokens: 42, total_price: '0.0001', currency: 'USD' },
    created_at: now(), finished_at: now(), files: [], iteration_id: null, loop_id: null };
}

function thought(id: string, text: string): Record<string, unknown> {
  return { id, position: 1, thought: text, observation: '', tool: '', tool_labels: {}, tool_input: '', message_files: [] };
}

function fileObject(url: string): Record<string, unknown> {
  return { dify_model_identity: '__dify__file__', id: null, tenant_id: randomUUID(), type: 'image', transfer_method: 'tool_file',
    remote_url: null, related_id: randomUUID(), filename: 'cat.png', extension: '.png', mime_type: 'image/png', size: PNG_1X1.length, url };
}

function usage(): Record<string, unknown> {
  return { prompt_tokens: 30, prompt_unit_price: '0.001', prompt_price_unit: '0.001', prompt_price: '0.0000300',
    completion_tokens: 12, completion_unit_price: '0.002', completion_price_unit: '0.001', completion_price: '0.0000240',
    total_tokens: 42, total_price: '0.0000540', currency: 'USD', latency: 0.42 };
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

function sendError(res: ServerResponse, err: HttpFail): void {
  if (err.status === 401) res.setHeader('www-authenticate', 'Bearer realm="api"');
  sendJson(res, err.status, { code: err.code, message: err.message, status: err.status });
}

/** Python json.dumps style: ", " and ": " separators, non-ASCII escaped as \uXXXX (older Dify releases). */
function dumpsPython(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(dumpsPython).join(', ')}]`;
  if (typeof value === 'object' && value !== null) {
    const parts = Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => `${asciiOnly(JSON.stringify(k))}: ${dumpsPython(v)}`);
    return `{${parts.join(', ')}}`;
  }
  return asciiOnly(JSON.stringify(value ?? null));
}

function asciiOnly(json: string): string {
  return json.replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function chunk(text: string, size: number): string[] {
  const chars = Array.from(text);
  const out: string[] = [];
  for (let i = 0; i < chars.length; i += Math.max(1, size)) out.push(chars.slice(i, i + Math.max(1, size)).join(''));
  return out;
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of req as AsyncIterable<Buffer>) parts.push(part);
  return Buffer.concat(parts);
}

function isMultipart(req: IncomingMessage): boolean {
  return (req.headers['content-type'] ?? '').startsWith('multipart/form-data');
}

function tryJson(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

function now(): number {
  return Math.floor(Date.now() / 1000);
}
