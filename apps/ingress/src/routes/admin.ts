import { timingSafeEqual } from 'node:crypto';
import type { Queue } from 'bullmq';
import type { Config } from '@wxdify/core';
import type { Context, Middleware, Next } from 'koa';

export const ADMIN_PATH = '/admin/queues';

/**
 * Bull Board at /admin/queues behind HTTP basic auth (Bull Board has none of its own; treat the
 * dashboard as Redis access). Absent, and so 404, when no ADMIN_PASSWORD is set. Job data shows
 * followers' OpenIDs and texts, which is why it is never exposed without a password.
 */
export async function createAdminMiddleware(config: Config, queues: Queue[]): Promise<Middleware[]> {
  if (!config.adminPassword) return [];
  // Loaded only when the dashboard is on: Bull Board and its UI cost ~40 MB of memory.
  const [{ createBullBoard }, { BullMQAdapter }, { KoaAdapter }] = await Promise.all([
    import('@bull-board/api'),
    import('@bull-board/api/bullMQAdapter'),
    import('@bull-board/koa'),
  ]);
  const serverAdapter = new KoaAdapter();
  serverAdapter.setBasePath(ADMIN_PATH);
  createBullBoard({
    queues: queues.map((q) => new BullMQAdapter(q)),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'wechat-dify' } },
  });
  return [basicAuth(config.adminUsername, config.adminPassword), serverAdapter.registerPlugin() as unknown as Middleware];
}

function basicAuth(username: string, password: string): Middleware {
  const expected = Buffer.from(`${username}:${password}`);
  return async (ctx: Context, next: Next) => {
    if (ctx.path !== ADMIN_PATH && !ctx.path.startsWith(`${ADMIN_PATH}/`)) return next();
    const header = ctx.get('authorization');
    const given = header.startsWith('Basic ') ? Buffer.from(header.slice(6), 'base64') : Buffer.alloc(0);
    if (given.length === expected.length && timingSafeEqual(given, expected)) return next();
    ctx.status = 401;
    ctx.set('WWW-Authenticate', 'Basic realm="wechat-dify admin", charset="UTF-8"');
    ctx.body = 'authentication required';
  };
}
