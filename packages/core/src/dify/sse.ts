import { createParser, type EventSourceMessage, type EventSourceParser, type ParseError } from 'eventsource-parser';
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { DifyEventMap, DifyEventName, RawDifyEvent } from './types.js';

/** One item of a Dify stream: a data event, or bytes that completed none (a keep-alive). */
export type SseItem = { type: 'event'; event: RawDifyEvent; id?: string } | { type: 'ping' };

/** Largest frame we buffer (characters). Chatflow `node_finished` can carry whole prompts, hence generous. */
export const DEFAULT_MAX_SSE_BUFFER = 8 * 1024 * 1024;

/**
 * Decodes a Dify event stream chunk by chunk, as the bytes come (a `data` listener feeds it).
 *
 * Dify frames events as `data: <json>\n\n` and keep-alives as `event: ping\n\n` with no data line
 * (https://docs.dify.ai/en/api-reference/guides/streaming). An SSE parser never dispatches a block
 * without data, so a ping is seen as bytes that complete no data event: such a chunk (and comments,
 * and `event: ping` blocks that do carry data) gives `{ type: 'ping' }` for the watchdog to ignore.
 * Malformed JSON is logged and skipped; a frame beyond `maxBufferSize` is fatal.
 */
export class SseDecoder {
  readonly #maxBufferSize: number;
  readonly #pending: SseItem[] = [];
  readonly #parser: EventSourceParser;
  // stream mode keeps a multi-byte character (CJK) split across chunks for the next decode
  readonly #decoder = new TextDecoder('utf-8');
  #overflow: ParseError | undefined;

  constructor(opts: { log: Logger; maxBufferSize?: number }) {
    const { log } = opts;
    this.#maxBufferSize = opts.maxBufferSize ?? DEFAULT_MAX_SSE_BUFFER;
    this.#parser = createParser({
      maxBufferSize: this.#maxBufferSize,
      onEvent: (msg) => {
        const item = toItem(msg, log);
        if (item) this.#pending.push(item);
      },
      onComment: () => this.#pending.push({ type: 'ping' }),
      onError: (err) => {
        if (err.type === 'max-buffer-size-exceeded') this.#overflow = err;
        else log.debug({ err: err.message }, 'dify sse line ignored');
      },
    });
  }

  /** The items this chunk completes, or one ping when it completes none. */
  feed(chunk: Uint8Array | string): SseItem[] {
    this.#parser.feed(typeof chunk === 'string' ? chunk : this.#decoder.decode(chunk, { stream: true }));
    if (this.#pending.length === 0 && !this.#overflow) return [{ type: 'ping' }];
    return this.#drain();
  }

  /**
   * The items left at the end of the stream: a last event may lack its blank line (or be cut
   * mid-line); it is terminated so that it is dispatched, or fails JSON.parse and is skipped.
   */
  end(): SseItem[] {
    this.#parser.feed(`${this.#decoder.decode()}\n\n`);
    return this.#drain();
  }

  #drain(): SseItem[] {
    if (this.#overflow) throw new AppError('dify_stream', `dify sse frame larger than ${this.#maxBufferSize} characters`);
    return this.#pending.splice(0);
  }
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
