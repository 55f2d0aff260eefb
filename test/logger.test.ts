import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { createLogger, withBindings } from '../packages/core/src/index.js';
import { lineSink } from './helpers/line-sink.js';

const flush = () => new Promise((r) => setImmediate(r));

// withBindings stands in for pino's child() on the per-request and per-job paths: it must write what a child would.
describe('withBindings', () => {
  it('writes its bindings (nested ones too) into every line, as a pino child would', async () => {
    const { sink, lines } = lineSink();
    const root = createLogger({ level: 'info', destination: sink });
    const log = withBindings(withBindings(root, { reqId: 'r1' }), { account: 'default', msgId: '42' });
    log.info({ outcome: 'reply', ms: 3 }, 'answered');
    log.warn('plain message');
    root.child({ reqId: 'r1' }).child({ account: 'default', msgId: '42' }).info({ outcome: 'reply', ms: 3 }, 'answered');
    await flush();
    const [bound, plain, child] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const { time: _t1, ...boundFields } = bound!;
    const { time: _t2, ...childFields } = child!;
    expect(boundFields).toEqual(childFields);
    expect(plain).toMatchObject({ reqId: 'r1', account: 'default', msgId: '42', msg: 'plain message', level: 40 });
  });

  it('keeps its bindings in child(), logs an Error under err, skips disabled levels, and redacts secrets in bindings', async () => {
    const { sink, lines } = lineSink();
    const root = createLogger({ level: 'info', destination: sink });
    const log = withBindings(root, { reqId: 'r2', token: 'wechat-token-secret' });
    log.debug({ never: true }, 'not written at info');
    log.child({ jobId: 'j1' }).info('from a child');
    log.error(new Error('boom'));
    await flush();
    expect(lines).toHaveLength(2);
    expect(lines.join('\n')).not.toContain('wechat-token-secret');
    const [fromChild, error] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(fromChild).toMatchObject({ reqId: 'r2', jobId: 'j1', token: '[redacted]', msg: 'from a child' });
    expect(error).toMatchObject({ reqId: 'r2', level: 50, msg: 'boom', err: { message: 'boom', type: 'Error' } });
    expect(log.isLevelEnabled('debug')).toBe(false);
    expect(log.level).toBe('info');
  });
});

// The default destination: stdout, buffered (LOG_BUFFER_BYTES), flushed every LOG_FLUSH_MS and at exit.
describe('createLogger on stdout', () => {
  const core = new URL('../packages/core/dist/index.js', import.meta.url).href;
  /** Runs `script` (an ES module with `createLogger` in scope) and collects its stdout lines with when they arrived. */
  const run = (script: string) =>
    new Promise<{ lines: { at: number; line: Record<string, unknown> }[]; code: number | null; startedAt: number }>((resolve) => {
      const startedAt = Date.now();
      const child = spawn(process.execPath, ['--input-type=module', '-e', `import { createLogger } from '${core}';\n${script}`], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      const lines: { at: number; line: Record<string, unknown> }[] = [];
      let rest = '';
      child.stdout.on('data', (chunk: Buffer) => {
        const parts = (rest + chunk.toString()).split('\n');
        rest = parts.pop() ?? '';
        for (const p of parts) if (p) lines.push({ at: Date.now(), line: JSON.parse(p) as Record<string, unknown> });
      });
      child.on('close', (code) => resolve({ lines, code, startedAt }));
    });

  it('writes a lone line within about a second, though the buffer is far from full', async () => {
    const { lines, startedAt } = await run(`
      const log = createLogger({ name: 'quiet' });
      log.info('a lone line');
      setTimeout(() => log.info('the last line'), 2500);
      setTimeout(() => process.exit(0), 2600);
    `);
    expect(lines.map((l) => l.line.msg)).toEqual(['a lone line', 'the last line']);
    // the first line was logged at once and sat alone in the buffer: the periodic flush sent it, well before the exit
    expect(lines[0]!.at - startedAt).toBeLessThan(2200);
  });

  it('loses no line when the process exits right after logging, and writes lines in order', async () => {
    const { lines, code } = await run(`
      const log = createLogger({ name: 'crash' });
      for (let i = 0; i < 500; i++) log.info({ i }, 'line');
      log.fatal('about to exit');
      process.exit(3);
    `);
    expect(code).toBe(3);
    expect(lines.map((l) => l.line.i ?? l.line.msg)).toEqual([...Array.from({ length: 500 }, (_, i) => i), 'about to exit']);
  });
});
