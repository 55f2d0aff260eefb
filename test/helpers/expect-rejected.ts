import { expect } from 'vitest';
import { RequestRejectedError } from '../../packages/core/src/errors.js';

/** Runs `run` and checks it refused the input with `code` and HTTP `status` (and a message matching `reason`). */
export function expectRejected(run: () => unknown, code: string, status: number, reason?: RegExp): void {
  let caught: unknown;
  try {
    run();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(RequestRejectedError);
  expect(caught).toMatchObject({ code, status });
  if (reason) expect((caught as Error).message).toMatch(reason);
}
