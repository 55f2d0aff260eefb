/** Error codes the callers branch on. Retry decisions come from these and from numbers, never from text. */
export type AppErrorCode =
  | 'bad_signature'
  | 'bad_request'
  | 'decrypt_failed'
  | 'body_too_large'
  | 'unknown_account'
  | 'config_invalid'
  | 'dify_http'
  | 'dify_stream'
  | 'dify_timeout'
  | 'dify_conversation_gone'
  | 'wechat_api'
  | 'internal';

/** The one error type of the project: a string `code`, a `retryable` flag, and an HTTP status when it maps to one. */
export class AppError extends Error {
  override readonly name: string = 'AppError';
  readonly code: AppErrorCode;
  readonly retryable: boolean;
  readonly status: number | undefined;

  constructor(code: AppErrorCode, message: string, opts: { retryable?: boolean; status?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.status = opts.status;
  }
}

/** A request WeChat (or someone pretending) sent that we refuse; `status` is the HTTP answer from CONTRACT.md. */
export class RequestRejectedError extends AppError {
  override readonly name = 'RequestRejectedError';
  constructor(code: AppErrorCode, status: number, message: string, cause?: unknown) {
    super(code, message, { status, cause });
  }
}

/** Configuration that cannot run; `issues` lists every bad field at once. */
export class ConfigError extends AppError {
  override readonly name = 'ConfigError';
  readonly issues: readonly string[];
  constructor(issues: readonly string[]) {
    super('config_invalid', `invalid configuration:\n  - ${issues.join('\n  - ')}`);
    this.issues = issues;
  }
}
