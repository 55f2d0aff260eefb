import { spawn, type ChildProcess } from 'node:child_process';
import { WeChatSimulator, type CallbackMode } from '../../packages/core/src/wechat/simulator.js';
import { LOG_FLUSH_MS } from '../../packages/core/src/logger.js';
import { freePort } from './redis-server.js';
import { AES_KEY, APP_ID, TOKEN } from './stack.js';

/** One production entry point (`apps/<kind>/dist/main.js`) running as its own process. */
export interface ServiceProcess {
  kind: 'ingress' | 'worker';
  url: string;
  child: ChildProcess;
  /** Every log line that reached its stdout so far (pino JSON). */
  logs: string[];
  /** Its log lines once all it logged until now reached stdout (lines are flushed at least every LOG_FLUSH_MS). */
  flushedLogs(): Promise<string[]>;
  exited: Promise<number | null>;
  /** SIGTERM, then waits for the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL: no goodbye, like a node that dies. */
  kill(): Promise<void>;
}

/** Starts the built ingress or worker with `env` on a free port and waits until /healthz answers. */
export async function startProcess(kind: 'ingress' | 'worker', env: Record<string, string>): Promise<ServiceProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, [`apps/${kind}/dist/main.js`], {
    env: { PATH: process.env.PATH ?? '', ...env, PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: env.LOG_LEVEL ?? 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: string[] = [];
  let buffer = '';
  const collect = (d: Buffer) => {
    buffer += d.toString();
    const lines = buffer.split('\n');
    buffer = lines.pop() ?? '';
    logs.push(...lines.filter(Boolean));
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  // 'close', not 'exit': every line it flushed at exit has been read by then
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`${kind} exited with ${child.exitCode}: ${logs.join('\n')}`);
    const ok = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
    if (ok) break;
    if (i > 200) throw new Error(`${kind} did not start: ${logs.join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    kind,
    url,
    child,
    logs,
    exited,
    async flushedLogs() {
      if (child.exitCode === null) await new Promise((r) => setTimeout(r, LOG_FLUSH_MS + 300));
      return logs;
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Waits until `url`/readyz answers `status`. */
export async function waitForReady(url: string, status = 200, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const got = await fetch(`${url}/readyz`).then((r) => r.status, () => 0);
    if (got === status) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url}/readyz never answered ${status}`);
}

/** A WeChat simulator aimed at a running ingress process, with the test account's keys. */
export function simulatorFor(ingress: { url: string }, mode: CallbackMode = 'plain'): WeChatSimulator {
  return new WeChatSimulator({ url: `${ingress.url}/wechat`, token: TOKEN, appId: APP_ID, encodingAesKey: AES_KEY, mode });
}
