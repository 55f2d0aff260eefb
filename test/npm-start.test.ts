import { execFile, spawn } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { freePort } from './helpers/redis-server.js';
import { eventually } from './helpers/wechat-timing.js';

// The newcomer's path: `npm start` (here its launcher, after the suite's build) spawns its own
// redis-server, the ingress and the worker; `npm run sim` talks to it as WeChat would.
describe('npm start and npm run sim', () => {
  let dify: FakeDify;
  let port: number;
  let launcher: ReturnType<typeof spawn>;
  let output = '';

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', answer: (q) => `Echo: ${q}` });
    port = await freePort();
    const env = { ...process.env, PORT: String(port), WORKER_PORT: String(await freePort()), WECHAT_TOKEN: 'simtoken', WECHAT_APP_ID: 'wxsim', WECHAT_ENCODING_AES_KEY: 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG', DIFY_API_BASE_URL: dify.baseUrl, DIFY_API_KEY: dify.apiKey, DIFY_APP_TYPE: 'chat', REDIS_URL: '' };
    delete (env as Record<string, string | undefined>).REDIS_URL;
    launcher = spawn(process.execPath, ['scripts/start.js'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    launcher.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    launcher.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await eventually(async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined))?.status === 200, 20_000);
  });
  afterAll(async () => {
    if (launcher.exitCode === null) {
      const exited = new Promise((r) => launcher.once('exit', r));
      launcher.kill('SIGTERM');
      await exited;
    }
    await dify.close();
  });

  it('serves /wechat with its own redis-server, and the simulator gets the answer in safe mode', async () => {
    expect(output).toContain('local redis-server on redis://127.0.0.1:');
    // Not spawnSync: the fake Dify lives in this process and must keep answering meanwhile.
    const sim = await promisify(execFile)(
      process.execPath,
      ['scripts/sim.js', '--url', `http://127.0.0.1:${port}/wechat`, '--token', 'simtoken', '--aes-key', 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG', '--app-id', 'wxsim', '--from', `o_sim_${Date.now()}`, 'hello from the simulator'],
      { encoding: 'utf8', timeout: 20_000 },
    );
    expect(sim.stdout, output.slice(-3000)).toContain('Echo');
    expect(sim.stdout).toContain('safe mode');
    expect(sim.stdout).toMatch(/attempt 1: HTTP 200/);
    expect(sim.stdout).toContain('Echo: hello from the simulator');
  });

  it('stops everything on SIGTERM, redis-server included', async () => {
    const exited = new Promise<number | null>((r) => launcher.once('exit', (code) => r(code)));
    launcher.kill('SIGTERM');
    expect(await exited).toBe(0);
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
    expect(output).toMatch(/stopped/);
  });
});

/** Runs the launcher with exactly `env` (nothing inherited) until it exits, or stops it after `timeoutMs`. */
async function launch(env: Record<string, string>, timeoutMs = 15_000): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, ['scripts/start.js'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c, signal) => resolve(signal ? null : c)));
  clearTimeout(timer);
  return { code, output };
}

describe('npm start refuses what it cannot run safely', () => {
  it('exits 1 naming WECHAT_TOKEN when only DIFY_API_KEY is set, instead of a demo token on every interface', async () => {
    const ports = { PORT: String(await freePort()), WORKER_PORT: String(await freePort()) };
    const { code, output } = await launch({ PATH: process.env.PATH!, DIFY_API_KEY: 'app-real-key', ...ports });
    expect(code, output).toBe(1);
    expect(output).toContain('WECHAT_TOKEN');
    expect(output).toContain('WECHAT_APP_ID');
    expect(output).not.toContain('DEMO');
  });

  it('exits 1 saying how to get Redis when no redis-server is on PATH and REDIS_URL is unset', async () => {
    const { code, output } = await launch({ PATH: dirname(process.execPath), PORT: String(await freePort()) });
    expect(code, output).toBe(1);
    expect(output).toContain('REDIS_URL');
    expect(output).toMatch(/install redis-server/);
  });

  const external = Object.values(networkInterfaces()).flat().find((i) => i && !i.internal && i.family === 'IPv4')?.address;
  it.skipIf(!external)('serves the demo mode, with its public token, on 127.0.0.1 only', async () => {
    const port = await freePort();
    const env = { PATH: process.env.PATH!, PORT: String(port), WORKER_PORT: String(await freePort()) };
    const launcher = spawn(process.execPath, ['scripts/start.js'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    launcher.stdout.on('data', (d: Buffer) => (output += d.toString()));
    launcher.stderr.on('data', (d: Buffer) => (output += d.toString()));
    try {
      await eventually(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.status === 200, 20_000);
      expect(output).toContain('DEMO mode');
      await expect(fetch(`http://${external}:${port}/healthz`)).rejects.toThrow();
    } finally {
      const exited = new Promise((r) => launcher.once('exit', r));
      launcher.kill('SIGTERM');
      await exited;
    }
  });
});
