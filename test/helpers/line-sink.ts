import { Writable } from 'node:stream';

/** A pino destination that keeps every line, for tests that read what a process logged. */
export function lineSink(): { sink: Writable; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  return { sink, lines };
}
