import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/**
 * Paths never written to logs: secrets in config, headers and WeChat/Dify payloads. An account's
 * secrets are matched where an AccountConfig can appear: on its own (`{ account }`), as a list
 * (`accounts`, the CONFIG_FILE shape). `Config.accounts` is a Map, which pino writes as `{}`.
 */
export const REDACT_PATHS = [
  'token',
  'appSecret',
  'encodingAesKey',
  'apiKey',
  'difyApiKey',
  'secret',
  'password',
  'accessToken',
  'access_token',
  '*.token',
  '*.appSecret',
  '*.encodingAesKey',
  '*.apiKey',
  '*.difyApiKey',
  '*.secret',
  '*.password',
  '*.accessToken',
  '*.access_token',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
  'accounts[*].token',
  'accounts[*].appSecret',
  'accounts[*].encodingAesKey',
  'accounts[*].difyApiKey',
  'config.accounts[*].token',
  'config.accounts[*].appSecret',
  'config.accounts[*].encodingAesKey',
  'config.accounts[*].difyApiKey',
];

/**
 * One write to stdout per this many bytes of log lines (about 12 lines) instead of one per line:
 * each write is a system call and a hop through libuv's thread pool, about a tenth of the
 * ingress's CPU per request when every line went out alone (npm run bench, profiles).
 */
export const LOG_BUFFER_BYTES = 4096;
/** The longest a line waits in that buffer when traffic is low. */
export const LOG_FLUSH_MS = 1000;

/**
 * Where a process's lines go: `dest` (a file descriptor or path; stdout by default), written
 * asynchronously and buffered, LOG_BUFFER_BYTES at a time or at least every LOG_FLUSH_MS; pino
 * flushes it at exit.
 */
export function logDestination(dest: number | string = 1): DestinationStream {
  return pino.destination({ dest, sync: false, minLength: LOG_BUFFER_BYTES, periodicFlush: LOG_FLUSH_MS });
}

/** The root logger of a process; everything else is a child of it. */
export function createLogger(opts: { level?: string; name?: string; destination?: DestinationStream } = {}): Logger {
  const options: LoggerOptions = {
    level: opts.level ?? 'info',
    base: opts.name ? { svc: opts.name } : null,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  // a log line never blocks the event loop
  return pino(options, opts.destination ?? logDestination());
}

/**
 * A listener for the `error` events BullMQ and ioredis repeat many times a second while Redis is
 * away: the first is logged, then at most one line per `intervalMs` with how many were skipped.
 */
export function throttledErrorLog(logger: Logger, msg: string, intervalMs = 10_000): (err: Error) => void {
  let last = 0;
  let skipped = 0;
  return (err) => {
    const now = Date.now();
    if (now - last < intervalMs) {
      skipped++;
      return;
    }
    logger.warn({ err: err.message, skipped }, msg);
    last = now;
    skipped = 0;
  };
}

type Level = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

/** See {@link withBindings}. Only the logging methods and `child`; the rest is read from the parent. */
class BoundLogger {
  readonly #parent: Logger;
  readonly #bindings: Record<string, unknown>;

  constructor(parent: Logger | BoundLogger, bindings: Record<string, unknown>) {
    // Bindings on bindings (the ingress's request, then its message) become one set over the pino logger.
    if (parent instanceof BoundLogger) {
      this.#parent = parent.#parent;
      this.#bindings = { ...parent.#bindings, ...bindings };
    } else {
      this.#parent = parent;
      this.#bindings = bindings;
    }
  }

  get level(): string {
    return this.#parent.level;
  }

  isLevelEnabled(level: string): boolean {
    return this.#parent.isLevelEnabled(level);
  }

  child(bindings: Record<string, unknown>, options?: object): Logger {
    return this.#parent.child({ ...this.#bindings, ...bindings }, options);
  }

  fatal(first?: unknown, ...rest: unknown[]): void { this.#write('fatal', first, rest); }
  error(first?: unknown, ...rest: unknown[]): void { this.#write('error', first, rest); }
  warn(first?: unknown, ...rest: unknown[]): void { this.#write('warn', first, rest); }
  info(first?: unknown, ...rest: unknown[]): void { this.#write('info', first, rest); }
  debug(first?: unknown, ...rest: unknown[]): void { this.#write('debug', first, rest); }
  trace(first?: unknown, ...rest: unknown[]): void { this.#write('trace', first, rest); }

  #write(level: Level, first: unknown, rest: unknown[]): void {
    const parent = this.#parent;
    if (!parent.isLevelEnabled(level)) return;
    const write = parent[level] as (...args: unknown[]) => void;
    if (first instanceof Error) write.call(parent, { ...this.#bindings, err: first }, ...(rest.length > 0 ? rest : [first.message]));
    else if (typeof first === 'object' && first !== null) write.call(parent, { ...this.#bindings, ...first }, ...rest);
    else write.call(parent, this.#bindings, first, ...rest);
  }
}

/**
 * A logger that writes `bindings` into each line it logs, like `parent.child(bindings)`, but
 * builds nothing until a line is logged: a pino child per request (the ingress made two) cost
 * more than the request's one log line, since pino runs the redaction over each child's bindings.
 * It has pino's logging methods, `child` (which keeps the bindings), `level` and `isLevelEnabled`.
 */
export function withBindings(parent: Logger, bindings: Record<string, unknown>): Logger {
  return new BoundLogger(parent, bindings) as unknown as Logger;
}
