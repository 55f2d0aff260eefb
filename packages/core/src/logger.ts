import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/** Paths never written to logs: secrets in config, headers and WeChat/Dify payloads. */
export const REDACT_PATHS = [
  'token',
  'appSecret',
  'encodingAesKey',
  'apiKey',
  'password',
  'accessToken',
  'access_token',
  '*.token',
  '*.appSecret',
  '*.encodingAesKey',
  '*.apiKey',
  '*.password',
  '*.accessToken',
  '*.access_token',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
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
  return opts.destination ? pino(options, opts.destination as never) : pino(options);
}
