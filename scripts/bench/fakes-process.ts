// The bench's side of the fakes' process (scripts/bench/fakes.ts): start it, talk to it over IPC.
import type { FakesMessage, FakesRequest } from './fakes.js';
import { startChild, type Child } from './processes.js';

export type FakesReady = Extract<FakesMessage, { type: 'ready' }>;
export type FakesReport = Extract<FakesMessage, { type: 'report' }>;

/** The running fakes: where they listen, and what they saw. */
export interface Fakes {
  child: Child;
  ready: FakesReady;
  /** Queues `count` Dify answers that ping for `delayMs` before they stream. */
  queueSlowAnswers(count: number, delayMs: number): Promise<void>;
  /** When each slow answer ended, the customer-service messages pushed, the peak of concurrent streams. */
  report(): Promise<FakesReport>;
}

/** Starts the fake Dify and the fake WeChat API in their own process (added to `children` at once). */
export async function startFakes(entry: string, nodeArgs: string[], dir: string, children: Child[]): Promise<Fakes> {
  const child = startChild('fakes', process.execPath, [...nodeArgs, entry], { dir, ipc: true, env: process.env });
  children.push(child);
  let nextId = 0;
  const request = <T extends FakesMessage>(msg: FakesRequest): Promise<T> =>
    new Promise((resolve) => {
      const onMessage = (reply: FakesMessage) => {
        if ('id' in reply && reply.id === msg.id) {
          child.process.off('message', onMessage);
          resolve(reply as T);
        }
      };
      child.process.on('message', onMessage);
      child.process.send(msg);
    });
  const ready = await new Promise<FakesReady>((resolve, reject) => {
    child.process.once('message', (m: FakesMessage) => (m.type === 'ready' ? resolve(m) : reject(new Error('fakes: unexpected message'))));
    child.process.once('exit', (code) => reject(new Error(`fakes exited with ${code}; see ${child.logFile}`)));
  });
  return {
    child,
    ready,
    queueSlowAnswers: async (count, delayMs) => {
      await request({ type: 'slow', id: ++nextId, count, delayMs });
    },
    report: () => request<FakesReport>({ type: 'report', id: ++nextId }),
  };
}
