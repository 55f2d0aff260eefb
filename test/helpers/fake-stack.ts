import { Redis } from 'ioredis';
import { afterAll, beforeAll, inject } from 'vitest';
import { startFakeDify, type FakeDify, type FakeDifyOptions } from '../fakes/fake-dify.js';
import { FakeWeChat } from '../fakes/fake-wechat.js';
import { startStack, type Stack } from './stack.js';

/** A fake Dify (a chat app unless `dify` says otherwise), a fake WeChat API, the stack on them, and a client of the tests' Redis (opened when first read). */
export interface FakeStack {
  dify: FakeDify;
  wechat: FakeWeChat;
  stack: Stack;
  redis: Redis;
}

/**
 * Starts a {@link FakeStack} before the enclosing describe block's tests and closes it after
 * them. Its fields are set once `beforeAll` ran: read them in tests and hooks, not while the
 * block is collected. `env` builds the stack's environment from the fakes (see `testEnv`).
 */
export function useFakeStack(opts: {
  dify: FakeDifyOptions & { pingIntervalMs: number };
  env: (fakes: { dify: FakeDify; wechat: FakeWeChat }) => Record<string, string>;
  stack?: Parameters<typeof startStack>[1];
}): FakeStack {
  const fx = {} as FakeStack;
  // opened on first use: not every file that starts a stack reads Redis itself
  let redis: Redis | undefined;
  Object.defineProperty(fx, 'redis', { get: () => (redis ??= new Redis(inject('redisUrl'))) });
  beforeAll(async () => {
    fx.dify = await startFakeDify({ mode: 'chat', ...opts.dify });
    fx.wechat = await new FakeWeChat().start();
    fx.stack = await startStack(opts.env(fx), opts.stack);
  });
  afterAll(async () => {
    await fx.stack?.close();
    await Promise.all([fx.dify?.close(), fx.wechat?.close(), redis?.quit()]);
  });
  return fx;
}
