import { createParser, type EventSourceMessage, type ParseError } from 'eventsource-parser';
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { DifyEventMap, DifyEventName, RawDifyEvent } from './types.js';

/** One item of a Dify stream: a data event, or bytes that completed none (a keep-alive). */
export type SseItem = { type: 'event'; event: RawDifyEvent; id?: string } | { type: 'ping' };

/** Largest frame we buffer (characters). Chatflow `node_finished` can carry whole prompts, hence generous. */
export const DEFAULT_MAX_SSE_BUFFER = 8 * 1024 * 1024;

/**
 * Reads a Dify event stream (a got stream, or any async iterable of bytes) into parsed JSON events.
 *
 * Dify frames events as `data: <json>\n\n` and keep-alives as `event: ping\n\n` with no data line
 * (https://docs.dify.ai/en/api-reference/guides/streaming). An SSE parser never dispatches a block
 * without data, so a ping is seen as bytes that complete no data event: those chunks (and comments,
 * and `event: ping` blocks that do carry data) are yielded as `{ type: 'ping' }` for the watchdog to
 * ignore. Malformed JSON is logged and skipped; a frame beyond `maxBufferSize` is fatal.
 */
export async function* readSseEvents(
  source: AsyncIterable<Uint8Array | string>,
  opts: { log: Logger; maxBufferSize?: number },
): AsyncGenerator<SseItem> {
  const maxBufferSize = opts.maxBufferSize ?? DEFAULT_MAX_SSE_BUFFER;
  const pending: SseItem[] = [];
  let overflow: ParseError | undefined;
  const parser = createParser({
    maxBufferSize,
    onEvent: (msg) => {
      const item = toItem(msg, opts.log);
      if (item) pending.push(item);
    },
    onComment: () => pending.push({ type: 'ping' }),
    onError: (err) => {
      if (err.type === 'max-buffer-size-exceeded') overflow = err;
      else opts.log.debug({ err: err.message }, 'dify sse line ignored');
    },
  });
  // stream mode keeps a multi-byte character (CJK) split across chunks for the next decode
  const decoder = new TextDecoder('utf-8');
  const drain = function* (): Generator<SseItem> {
    if (overflow) throw new AppError('dify_stream', `dify sse frame larger than ${maxBufferSize} characters`);
    yield* pending.splice(0);
  };

  for await (const chunk of source) {
    parser.feed(typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true }));
    if (pending.length === 0 && !overflow) yield { type: 'ping' };
    else yield* drain();
  }
  // A last event may lack its blank line (or be cut mid-line): terminate it so it is dispatched, or
  // fails JSON.parse and is skipped.
  parser.feed(`${decoder.decode()}\n\n`);
  yield* drain();
}

/** Narrows a raw event to its documented shape by name. Fields a release omits stay optional. */
export function isDifyEvent<K extends DifyEventName>(e: RawDifyEvent, name: K): e is RawDifyEvent & DifyEventMap[K] {
  return e.event === name;
}

function toItem(msg: EventSourceMessage, log: Logger): SseItem | undefined {
  if (msg.event === 'ping') return { type: 'ping' };
  let value: unknown;
  try {
    value = JSON.parse(msg.data);
  } catch {
    log.warn({ chars: msg.data.length }, 'dify sse data is not json, skipped');
    log.debug({ sample: msg.data.slice(0, 200) }, 'dify sse data skipped');
    return undefined;
  }
  if (!isRawEvent(value)) {
    log.warn({ chars: msg.data.length }, 'dify sse data has no event name, skipped');
    return undefined;
  }
  if (value.event === 'ping') return { type: 'ping' };
  return msg.id === undefined ? { type: 'event', event: value } : { type: 'event', event: value, id: msg.id };
}

function isRawEvent(value: unknown): value is RawDifyEvent {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    && typeof (value as { event?: unknown }).event === 'string';
}
