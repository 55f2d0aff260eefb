import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError } from './errors.js';
import { LANGUAGES } from './i18n/index.js';
import { REDIS_URL_SCHEME, hasHashTag, isClusterUrl } from './redis.js';

/** Dify app types as configured (`auto` asks Dify's `GET /info`). */
export const DIFY_APP_TYPES = ['chat', 'agent', 'chatflow', 'workflow', 'completion', 'auto'] as const;

const bool = z
  .union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no', ''])])
  .transform((v) => v === true || v === 'true' || v === '1' || v === 'yes');
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const optionalText = z.string().min(1).optional();

/** A bare host means `https://host` (the seed plugin's proxy setting); `http://` stays allowed. */
const baseUrl = z
  .string()
  .min(1)
  .transform((v) => (/^https?:\/\//i.test(v) ? v : `https://${v}`).replace(/\/+$/, ''))
  .pipe(z.url({ protocol: /^https?$/ }));

const accountSchema = z.object({
  id: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'letters, digits, - and _ only'),
  appId: z.string().min(1),
  token: z.string().regex(/^[A-Za-z0-9]{3,32}$/, 'WeChat tokens are 3-32 letters or digits'),
  encodingAesKey: z.string().regex(/^[A-Za-z0-9]{43}$/, 'must be 43 letters or digits').optional(),
  appSecret: optionalText,
  wechatApiBaseUrl: baseUrl.default('https://api.weixin.qq.com'),
  accessTokenMode: z.enum(['stable', 'plain']).default('stable'),
  difyApiBaseUrl: baseUrl.default('https://api.dify.ai/v1'),
  difyApiKey: z.string().min(1),
  difyAppType: z.enum(DIFY_APP_TYPES).default('auto'),
  enableCustomMessage: bool.default(false),
  timeoutMessage: optionalText,
  continueWaitingMessage: optionalText,
  maxContinueCount: int(0, 100).default(2),
  retryWaitTimeoutRatio: z.coerce.number().min(0.1).max(1).default(0.7),
  language: z.enum(LANGUAGES).default('zh_Hans'),
  welcomeMessage: optionalText,
  difyQueryVariable: z.string().min(1).default('query'),
  difyOutputVariable: optionalText,
  difyIdleTimeoutMs: int(1, 3_600_000).default(30_000),
  difyTotalTimeoutMs: int(1, 3_600_000).default(240_000),
});

const serviceSchema = z.object({
  redisUrl: z.string().regex(REDIS_URL_SCHEME, 'must start with redis://, rediss://, redis+cluster:// or rediss+cluster://').optional(),
  queuePrefix: z.string().min(1).max(64).default('wxdify'),
  port: int(0, 65535).optional(),
  host: z.string().min(1).default('0.0.0.0'),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  workerConcurrency: int(1, 10_000).default(200),
  adminUsername: z.string().min(1).default('admin'),
  adminPassword: optionalText,
  /** WeChat cuts each request at 5 s; tests shrink it, production never changes it. */
  wechatTimeoutMs: int(200, 5000).default(5000),
  /** Margin kept between our last byte and WeChat's cut. */
  replyMarginMs: int(0, 2000).default(500),
  /** How long a stopping worker lets running jobs finish before leaving them to another worker. */
  shutdownGraceMs: int(0, 3_600_000).default(30_000),
});

/** One WeChat Official Account bound to one Dify app. */
export type AccountConfig = Readonly<z.infer<typeof accountSchema>>;
/** The whole, validated, frozen configuration of a process. */
export type Config = Readonly<z.infer<typeof serviceSchema>> & {
  readonly accounts: ReadonlyMap<string, AccountConfig>;
};

const ACCOUNT_ENV: Record<string, string> = {
  appId: 'WECHAT_APP_ID',
  token: 'WECHAT_TOKEN',
  encodingAesKey: 'WECHAT_ENCODING_AES_KEY',
  appSecret: 'WECHAT_APP_SECRET',
  wechatApiBaseUrl: 'WECHAT_API_BASE_URL',
  accessTokenMode: 'WECHAT_ACCESS_TOKEN_MODE',
  difyApiBaseUrl: 'DIFY_API_BASE_URL',
  difyApiKey: 'DIFY_API_KEY',
  difyAppType: 'DIFY_APP_TYPE',
  enableCustomMessage: 'ENABLE_CUSTOM_MESSAGE',
  timeoutMessage: 'TIMEOUT_MESSAGE',
  continueWaitingMessage: 'CONTINUE_WAITING_MESSAGE',
  maxContinueCount: 'MAX_CONTINUE_COUNT',
  retryWaitTimeoutRatio: 'RETRY_WAIT_TIMEOUT_RATIO',
  language: 'LANGUAGE',
  welcomeMessage: 'WELCOME_MESSAGE',
  difyQueryVariable: 'DIFY_QUERY_VARIABLE',
  difyOutputVariable: 'DIFY_OUTPUT_VARIABLE',
  difyIdleTimeoutMs: 'DIFY_IDLE_TIMEOUT_MS',
  difyTotalTimeoutMs: 'DIFY_TOTAL_TIMEOUT_MS',
};

const SERVICE_ENV: Record<string, string> = {
  redisUrl: 'REDIS_URL',
  queuePrefix: 'QUEUE_PREFIX',
  port: 'PORT',
  host: 'HOST',
  logLevel: 'LOG_LEVEL',
  workerConcurrency: 'WORKER_CONCURRENCY',
  adminUsername: 'ADMIN_USERNAME',
  adminPassword: 'ADMIN_PASSWORD',
  wechatTimeoutMs: 'WECHAT_TIMEOUT_MS',
  replyMarginMs: 'REPLY_MARGIN_MS',
  shutdownGraceMs: 'SHUTDOWN_GRACE_MS',
};

/**
 * Reads and validates the configuration. The only reader of `process.env`-like input;
 * lists every bad field at once (by its environment or file name) in a ConfigError.
 */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const issues: string[] = [];
  const service = serviceSchema.safeParse(pick(env, SERVICE_ENV));
  if (!service.success) issues.push(...describe(service.error, (k) => SERVICE_ENV[k] ?? k));
  else issues.push(...checkClusterPrefix(service.data));

  const accounts = new Map<string, AccountConfig>();
  for (const { raw, label } of readAccounts(env, issues)) {
    const parsed = accountSchema.safeParse(raw);
    if (!parsed.success) {
      issues.push(...describe(parsed.error, label));
      continue;
    }
    if (accounts.has(parsed.data.id)) issues.push(`${label('id')}: duplicate account id "${parsed.data.id}"`);
    accounts.set(parsed.data.id, Object.freeze(parsed.data));
  }
  if (issues.length > 0 || !service.success) throw new ConfigError(issues);
  return Object.freeze({ ...service.data, accounts });
}

/**
 * On a Redis Cluster, BullMQ's Lua scripts and ours touch several keys at once, so every key must
 * hash to one slot: the prefix needs a hash tag (`{wxdify}`). Without one the first multi-key
 * script fails with CROSSSLOT; refuse to start instead (stack.md §1.10).
 */
function checkClusterPrefix(service: { redisUrl?: string; queuePrefix: string }): string[] {
  if (!service.redisUrl || !isClusterUrl(service.redisUrl) || hasHashTag(service.queuePrefix)) return [];
  return [
    `QUEUE_PREFIX: "${service.queuePrefix}" has no hash tag; REDIS_URL is a Redis Cluster, so use one such as {${service.queuePrefix.replace(/[{}]/g, '') || 'wxdify'}} to keep every key in one slot`,
  ];
}

function readAccounts(env: Record<string, string | undefined>, issues: string[]) {
  const file = env.CONFIG_FILE;
  if (!file) {
    return [{ raw: { id: 'default', ...pick(env, ACCOUNT_ENV) }, label: (k: string) => ACCOUNT_ENV[k] ?? k }];
  }
  let doc: unknown;
  try {
    const text = readFileSync(file, 'utf8');
    doc = /\.json$/i.test(file) ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    issues.push(`CONFIG_FILE: cannot read ${file}: ${(err as Error).message}`);
    return [];
  }
  const list = (doc as { accounts?: unknown })?.accounts;
  if (!Array.isArray(list) || list.length === 0) {
    issues.push('CONFIG_FILE: accounts must be a non-empty list');
    return [];
  }
  return list.map((item: unknown, i: number) => ({
    raw: expandEnv(item, env, `accounts[${i}]`, issues),
    label: (k: string) => `CONFIG_FILE accounts[${i}].${k}`,
  }));
}

/** Replaces `${NAME}` in string values with the environment's value, so secrets stay out of the file. */
function expandEnv(value: unknown, env: Record<string, string | undefined>, path: string, issues: string[]): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => {
      const v = env[name];
      if (v === undefined) issues.push(`CONFIG_FILE ${path}: environment variable ${name} is not set`);
      return v ?? '';
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => expandEnv(v, env, `${path}[${i}]`, issues));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, expandEnv(v, env, `${path}.${k}`, issues)]));
  }
  return value;
}

function pick(env: Record<string, string | undefined>, names: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, name] of Object.entries(names)) {
    const v = env[name];
    if (v !== undefined && v !== '') out[key] = v;
  }
  return out;
}

function describe(error: z.ZodError, label: (key: string) => string): string[] {
  return error.issues.map((issue) => {
    const key = String(issue.path[0] ?? '');
    const msg = issue.code === 'invalid_type' && issue.input === undefined ? 'is required' : issue.message;
    return `${label(key)}: ${msg}`;
  });
}
