import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { ConfigError, loadConfig } from '../packages/core/src/index.js';
import { uniquePrefix } from './helpers/prefix.js';
import { freePort } from './helpers/redis-server.js';
import { eventually } from './helpers/wechat-timing.js';

const base = { REDIS_URL: 'redis://127.0.0.1:6379', WECHAT_APP_ID: 'wx1', WECHAT_TOKEN: 'tok123', DIFY_API_KEY: 'app-k' };

function issuesOf(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return [...err.issues];
    throw err;
  }
  return [];
}

describe('loadConfig', () => {
  it('reads one account named default from the environment, with the contract defaults', () => {
    const config = loadConfig(base);
    const account = config.accounts.get('default')!;
    expect(config.queuePrefix).toBe('wxdify');
    expect(config.workerConcurrency).toBe(200);
    expect(account).toMatchObject({
      appId: 'wx1',
      wechatApiBaseUrl: 'https://api.weixin.qq.com',
      difyApiBaseUrl: 'https://api.dify.ai/v1',
      difyAppType: 'auto',
      enableCustomMessage: false,
      maxContinueCount: 2,
      retryWaitTimeoutRatio: 0.7,
      language: 'zh_Hans',
      difyQueryVariable: 'query',
      difyIdleTimeoutMs: 30000,
      difyTotalTimeoutMs: 240000,
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('turns a bare proxy host into https and keeps http:// as given', () => {
    expect(loadConfig({ ...base, WECHAT_API_BASE_URL: 'wx-proxy.example.com' }).accounts.get('default')!.wechatApiBaseUrl).toBe('https://wx-proxy.example.com');
    expect(loadConfig({ ...base, WECHAT_API_BASE_URL: 'http://10.0.0.1:8080/' }).accounts.get('default')!.wechatApiBaseUrl).toBe('http://10.0.0.1:8080');
  });

  it('takes every Redis URL scheme the client opens, TLS cluster seeds included', () => {
    for (const url of ['redis://h:6379', 'rediss://h:6380', 'redis+cluster://h:7000', 'rediss+cluster://u:p@h:7000']) {
      expect(loadConfig({ ...base, REDIS_URL: url, QUEUE_PREFIX: '{wxdify}' }).redisUrl).toBe(url);
    }
  });

  it('names every bad field at once', () => {
    const issues = issuesOf({
      REDIS_URL: 'localhost:6379',
      WECHAT_TOKEN: 'x',
      WECHAT_ENCODING_AES_KEY: 'short',
      RETRY_WAIT_TIMEOUT_RATIO: '2',
      LANGUAGE: 'fr_FR',
      DIFY_APP_TYPE: 'bot',
    });
    const named = issues.map((i) => i.split(':')[0]);
    expect(named).toEqual(
      expect.arrayContaining(['REDIS_URL', 'WECHAT_APP_ID', 'WECHAT_TOKEN', 'WECHAT_ENCODING_AES_KEY', 'DIFY_API_KEY', 'RETRY_WAIT_TIMEOUT_RATIO', 'LANGUAGE', 'DIFY_APP_TYPE']),
    );
    expect(issues.find((i) => i.startsWith('WECHAT_APP_ID'))).toContain('required');
  });

  it('reads many accounts from a YAML CONFIG_FILE with ${ENV} secrets', () => {
    const dir = mkdtempSync(join(tmpdir(), 'wxdify-config-'));
    const file = join(dir, 'accounts.yaml');
    writeFileSync(
      file,
      ['accounts:', '  - id: shop', '    appId: wxshop', '    token: ${SHOP_TOKEN}', '    difyApiKey: ${SHOP_KEY}', '    language: en_US',
        '  - id: news', '    appId: wxnews', '    token: newstoken', '    difyApiKey: app-news', '    enableCustomMessage: true'].join('\n'),
    );
    const config = loadConfig({ REDIS_URL: base.REDIS_URL, CONFIG_FILE: file, SHOP_TOKEN: 'shoptoken', SHOP_KEY: 'app-shop' });
    expect([...config.accounts.keys()]).toEqual(['shop', 'news']);
    expect(config.accounts.get('shop')).toMatchObject({ token: 'shoptoken', difyApiKey: 'app-shop', language: 'en_US' });
    expect(config.accounts.get('news')).toMatchObject({ enableCustomMessage: true, language: 'zh_Hans' });
  });

  it('reads a JSON CONFIG_FILE and names a missing ${ENV} and a bad field by its place in the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'wxdify-config-'));
    const file = join(dir, 'accounts.json');
    writeFileSync(file, JSON.stringify({ accounts: [{ id: 'a', appId: 'wxa', token: '${NOPE}', difyApiKey: 'k', maxContinueCount: -1 }] }));
    const issues = issuesOf({ REDIS_URL: base.REDIS_URL, CONFIG_FILE: file });
    expect(issues.some((i) => i.includes('NOPE'))).toBe(true);
    expect(issues.some((i) => i.startsWith('CONFIG_FILE accounts[0].maxContinueCount'))).toBe(true);
  });

  it('stops a production entry with exit code 1 and a message naming the field', () => {
    const res = spawnSync(process.execPath, ['apps/ingress/dist/main.js'], {
      env: { PATH: process.env.PATH, REDIS_URL: 'redis://127.0.0.1:1', WECHAT_APP_ID: 'wx', DIFY_API_KEY: 'k' },
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(res.status).toBe(1);
    expect(res.stdout + res.stderr).toContain('WECHAT_TOKEN');
  });

  it('names a bad LOG_LEVEL with the other bad fields instead of crashing on it', () => {
    const res = spawnSync(process.execPath, ['apps/worker/dist/main.js'], {
      env: { PATH: process.env.PATH, REDIS_URL: 'redis://127.0.0.1:1', WECHAT_APP_ID: 'wx', DIFY_API_KEY: 'k', LOG_LEVEL: 'verbose' },
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(res.status).toBe(1);
    const fatal = res.stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line) as { level: number; msg: string });
    expect(fatal).toHaveLength(1);
    expect(fatal[0]!.level).toBe(60);
    expect(fatal[0]!.msg).toMatch(/LOG_LEVEL: .*\n(.*\n)*.*WECHAT_TOKEN: is required|WECHAT_TOKEN: is required(.*\n)*.*LOG_LEVEL: /);
  });

  it('applies a valid LOG_LEVEL once the configuration is loaded', async () => {
    expect(issuesOf({ ...base, LOG_LEVEL: 'verbose' }).map((i) => i.split(':')[0])).toEqual(['LOG_LEVEL']);
    const port = await freePort();
    const child = spawn(process.execPath, ['apps/ingress/dist/main.js'], {
      env: { PATH: process.env.PATH, ...base, REDIS_URL: inject('redisUrl'), QUEUE_PREFIX: uniquePrefix(), PORT: String(port), LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    try {
      await eventually(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.status === 200, 10_000);
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    // 'ingress listening', 'shutting down' … are info lines: none at warn.
    const levels = stdout.split('\n').filter(Boolean).map((line) => (JSON.parse(line) as { level: number }).level);
    expect(levels.filter((level) => level < 40)).toEqual([]);
  });
});
