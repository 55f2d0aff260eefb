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
