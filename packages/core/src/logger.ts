import { pino, type Logger, type LoggerOptions } from 'pino';

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

/** The root logger of a process; everything else is a child of it. */
export function createLogger(opts: { level?: string; name?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  const options: LoggerOptions = {
    level: opts.level ?? 'info',
    base: opts.name ? { svc: opts.name } : null,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  // Asynchronous writes to stdout: a log line never blocks the event loop; pino flushes at exit.
  return pino(options, opts.destination ? (opts.destination as never) : pino.destination({ dest: 1, sync: false }));
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
