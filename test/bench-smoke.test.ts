import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it, onTestFinished } from 'vitest';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Runs one of the bench's scripts (`npm run bench`'s by default) as the README says. */
function runScript(env: Record<string, string>, args = ['scripts/bench.ts']): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { out += c.toString(); });
    child.on('exit', (code) => resolve({ code, out }));
  });
}

describe('npm run bench', () => {
  it('measures the queue and the relay and prints the table', async () => {
    // tiny numbers: the real run takes about a minute and a half
    const { code, out } = await runScript({
      BENCH_FOLLOWERS: '2',
      BENCH_WARMUP_S: '0.3',
      BENCH_DURATION_S: '1',
      BENCH_SLOW_FOLLOWERS: '3',
      BENCH_SLOW_DELAY_MS: '300',
      BENCH_PACED_S: '0.5',
      BENCH_PACED_RATE: '20',
      BENCH_DRAIN_MAX_S: '0',
      BENCH_PARTS_N: '40',
      BENCH_KEEP: '1',
    });
    const kept = /^logs kept in (\S+)$/m.exec(out)?.[1];
    expect(kept, out).toBeDefined();
    onTestFinished(() => rmSync(kept!, { recursive: true, force: true }));
    expect(code, out).toBe(0);
    expect(out).not.toMatch(/^error:/m);
    const rate = /^\| fast: messages\/s\s*\|\s*(\d+)\s*\|\s*(\d+)/m.exec(out);
    expect(rate, out).not.toBeNull();
    expect(Number(rate![1])).toBeGreaterThan(0);
    expect(Number(rate![2])).toBeGreaterThan(0);
    // the ratio of the whole run, and of each pair of rounds that ran back to back (3 by default)
    expect(out).toMatch(/^\| fast: queue\/baseline ratio\s*\| \d+\.\d\d \(by round: \d+\.\d\d, \d+\.\d\d, \d+\.\d\d\)/m);
    expect(out).toMatch(/^\| slow: answers delivered\s*\| 3\/3 /m);
    // the slow path's CPU of the worker, the ingress, redis-server and the fakes, each measured
    expect(out).toMatch(/^\| slow: CPU ms\/message worker, ingress, redis-server, fakes\s*\| \d+\.\d\d, \d+\.\d\d, \d+\.\d\d, \d+\.\d\d /m);
    expect(out).toMatch(/^\| cost: Redis commands\/message\s*\|\s*\d/m);
    // how long each process of either side waited for a CPU (from the kernel's schedstat)
    expect(out).toMatch(/^\| machine: time waiting for a CPU, ms\/message\s*\| ingress \d+\.\d\d, worker \d+\.\d\d, redis \d+\.\d\d, fakes \d+\.\d\d, loadgen \d+\.\d\d\s*\| relay \d+\.\d\d, fakes \d+\.\d\d, loadgen \d+\.\d\d/m);
    // the parts table: every part measured, the Redis ones with redis-server's share
    for (const part of ['callback decode, plain', 'HTTP exchange through Koa', 'log line', 'Dify call with got', 'SSE parsing']) {
      expect(out).toMatch(new RegExp(`^\\| ${part}[^|]*\\| \\w+\\s*\\| \\d+\\.\\d`, 'm'));
    }
    expect(out).toMatch(/^\| BullMQ job: add, fetch, complete\s*\|[^|]*\|\s*\d+\.\d\s*\|\s*\d+\.\d\s*\|\s*\d+\.\d/m);

    // the kept run, hop by hop: every fast-path message of the queue found with all its timestamps
    const fastAnswered = Number(rate![1]); // messages/s over the 1 s measured: the messages answered in it
    const hops = await runScript({}, ['scripts/bench/hops.ts', kept!]);
    expect(hops.code, hops.out).toBe(0);
    const found = Number(/^(\d+) messages$/m.exec(hops.out)?.[1]);
    expect(found, hops.out).toBeGreaterThanOrEqual(fastAnswered);
    for (const hop of ['arrival → job added', 'job added → worker starts it', 'worker starts → answer ready', 'answer ready → reply sent']) {
      expect(hops.out).toMatch(new RegExp(`^\\| ${hop}[^|]*\\| \\d+\\.\\d\\s*\\| \\d+\\.\\d\\s*\\| \\d+\\.\\d`, 'm'));
    }
  }, 60_000);
});
