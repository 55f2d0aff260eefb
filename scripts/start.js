// `npm start`: the whole stack in one terminal for a newcomer: a local redis-server (when
// REDIS_URL is unset), the ingress and the worker, with readable logs. Production runs the two
// entry points separately (`npm run start:ingress`, `npm run start:worker`).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig } from '@wxdify/core';
import pretty from 'pino-pretty';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
if (existsSync(join(root, '.env'))) process.loadEnvFile(join(root, '.env'));

const env = { ...process.env };
const children = [];
let stopping = false;

// Demo mode only for a newcomer who has configured nothing at all. Anyone who set one of these
// means a real deployment: filling in the rest with public placeholders (a token everybody knows,
// on every interface) would serve a forgeable endpoint, so the normal validation names what is missing.
const DEMO = { WECHAT_TOKEN: 'devtoken', WECHAT_APP_ID: 'wxdemo', DIFY_API_KEY: 'app-demo' };
if (!env.CONFIG_FILE && Object.keys(DEMO).every((k) => !env[k])) {
  console.warn(
    `\n  No WeChat or Dify settings in the environment or .env: starting in DEMO mode with placeholder values` +
      `\n  (${Object.entries(DEMO).map(([k, v]) => `${k}=${v}`).join(', ')}), listening on 127.0.0.1 only.` +
      `\n  Copy .env.example to .env and fill it in to talk to your Official Account and your Dify app.\n`,
  );
  Object.assign(env, DEMO, { HOST: '127.0.0.1' });
}

try {
  loadConfig(env);
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  console.error(
    `\n  npm start: the configuration (environment or .env) is incomplete or invalid:\n    - ${err.issues.join('\n    - ')}` +
      `\n  Fill these in (see .env.example), or unset WECHAT_TOKEN, WECHAT_APP_ID, DIFY_API_KEY and CONFIG_FILE for the demo mode.\n`,
  );
  process.exit(1);
}

if (!env.REDIS_URL) {
  const found = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (found.error) {
    console.error(
      '\n  npm start needs Redis: set REDIS_URL=redis://host:6379, or install redis-server so it is on PATH' +
        '\n  (Debian/Ubuntu: sudo apt-get install -y redis-server; macOS: brew install redis).\n',
    );
    process.exit(1);
  }
  const port = await freePort();
  const dir = join(root, '.data', 'redis');
  mkdirSync(dir, { recursive: true });
  // Persistence on (AOF every second) and no eviction: BullMQ needs both to keep jobs safe.
  const redis = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--maxmemory-policy', 'noeviction'],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  watch('redis-server', redis);
  env.REDIS_URL = `redis://127.0.0.1:${port}`;
  await waitForPort(port);
  console.log(`  local redis-server on ${env.REDIS_URL} (data in .data/redis)`);
}

const ingressPort = env.PORT ?? '8080';
start('ingress', 'apps/ingress/dist/main.js', { PORT: ingressPort });
start('worker', 'apps/worker/dist/main.js', { PORT: env.WORKER_PORT ?? '8081' });
console.log(`  WeChat server URL: http://localhost:${ingressPort}/wechat\n`);

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => stop(0));

function start(name, file, extra) {
  // Same V8 flag as the production entries (package.json start:* scripts, Dockerfile).
  const child = spawn(process.execPath, ['--max-semi-space-size=4', join(root, file)], { env: { ...env, ...extra }, stdio: ['ignore', 'pipe', 'inherit'] });
  child.stdout.pipe(pretty({ colorize: process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true }));
  watch(name, child);
}

function watch(name, child) {
  children.push(child);
  child.on('exit', (code) => {
    if (stopping) return;
    console.error(`  ${name} exited with code ${code}; stopping the rest`);
    stop(code || 1);
  });
}

function stop(code) {
  if (stopping) return;
  stopping = true;
  // The apps first (they finish what they hold), Redis last.
  const [redis, ...apps] = children[0]?.spawnfile === 'redis-server' ? children : [undefined, ...children];
  Promise.all(apps.map((c) => ended(c, 'SIGTERM')))
    .then(() => (redis ? ended(redis, 'SIGTERM') : undefined))
    .finally(() => process.exit(code));
}

function ended(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', resolve);
    child.kill(signal);
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

async function waitForPort(port) {
  const { connect } = await import('node:net');
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((resolve) => {
      const s = connect(port, '127.0.0.1', () => (s.end(), resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('redis-server did not start');
}
