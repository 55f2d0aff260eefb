import { execFile, spawn } from 'node:child_process';
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
