// Child processes of the benchmark: redis-server, the built ingress and worker, the relay and the
// fakes; and what Linux tells about each of them (/proc/<pid>/stat and /status).
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { freePort, waitForRedis } from '../../test/helpers/redis-server.js';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** A child the bench started and must stop. */
export interface Child {
  name: string;
  process: ChildProcess;
  pid: number;
  /** Where its stdout and stderr go. */
  logFile: string;
}

/** CPU time of a process so far, in ms (utime + stime of /proc/<pid>/stat). */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // the command name may hold spaces and parentheses: count fields after the last ')'
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / CLOCK_TICKS;
}

/**
 * How long the threads of a process spent runnable but waiting for a CPU so far, in ms (the second
 * field of /proc/<pid>/task/<tid>/schedstat, summed over its live threads); undefined where the
 * kernel does not keep it. On 2 cores shared by five busy processes this, not a process's own CPU,
 * is where most of a message's latency goes.
 */
export function cpuWaitMs(pid: number): number | undefined {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return undefined;
  }
  let ns = 0;
  for (const tid of tids) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
    } catch (err) {
      // a thread that ended since the listing takes its count with it; any other error: no schedstat here
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ESRCH') return undefined;
    }
  }
  return Number.isFinite(ns) ? ns / 1e6 : undefined;
}

/** CPU time all processes of the machine spent so far, in ms (/proc/stat; idle and iowait excluded). */
export function machineBusyMs(): number {
  const [, user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).map(Number);
  return ((user! + nice! + system! + irq! + softirq! + (steal ?? 0)) * 1000) / CLOCK_TICKS;
}

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ): 100 on every Linux build that matters. */
const CLOCK_TICKS = 100;

/** Resident memory now (all, anonymous, file-backed) and its peak since start or {@link resetPeakRss}, in bytes. */
export function rss(pid: number): { rss: number; anon: number; file: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const bytes = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { rss: bytes('VmRSS'), anon: bytes('RssAnon'), file: bytes('RssFile') + bytes('RssShmem'), hwm: bytes('VmHWM') };
}

/** Resets VmHWM to the current RSS (`echo 5 > /proc/<pid>/clear_refs`); false where not allowed. */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export { freePort };

/** Starts a child with its output in `<dir>/<name>.log`. */
export function startChild(name: string, command: string, args: string[], opts: { dir: string; env?: NodeJS.ProcessEnv; ipc?: boolean }): Child {
  const logFile = join(opts.dir, `${name}.log`);
  const fd = openSync(logFile, 'a');
  const stdio: StdioOptions = opts.ipc ? ['ignore', fd, fd, 'ipc'] : ['ignore', fd, fd];
  const child = spawn(command, args, { env: opts.env ?? process.env, stdio });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`${name} did not start`);
  child.on('exit', (code, signal) => {
    if (!stopping.has(child)) process.stderr.write(`bench: ${name} exited early (${code ?? signal}); see ${logFile}\n`);
  });
  return { name, process: child, pid: child.pid, logFile };
}

const stopping = new WeakSet<ChildProcess>();

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the child is gone. */
export async function stopChild(child: Child, graceMs = 10_000): Promise<void> {
  const p = child.process;
  stopping.add(p);
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts redis-server as production would run it (scripts/start.js, docker-compose): AOF with
 * fsync every second, noeviction; every other setting (RDB snapshots included) is Redis' default.
 */
export async function startRedis(dir: string): Promise<{ child: Child; url: string; args: string[] }> {
  const port = await freePort();
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'everysec',
    '--maxmemory-policy', 'noeviction'];
  const child = startChild('redis', 'redis-server', args, { dir });
  const url = `redis://127.0.0.1:${port}`;
  await waitForRedis(url, child.process);
  return { child, url, args: args.slice(4) };
}

/** Polls `url` until it answers 200, or throws after `timeoutMs`. */
export async function waitForOk(url: string, child: Child, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (child.process.exitCode !== null) throw new Error(`${child.name} exited with ${child.process.exitCode}; see ${child.logFile}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`${child.name} not ready at ${url} after ${timeoutMs} ms; see ${child.logFile}`);
}
