import { randomBytes } from 'node:crypto';

/** A fresh key prefix, so tests sharing the one redis-server never see each other's keys. */
export function uniquePrefix(): string {
  return `t${randomBytes(5).toString('hex')}`;
}
