import { randomUUID } from 'node:crypto';
import { AppError, withBindings, type Logger } from '@wxdify/core';
import type { Context, Next } from 'koa';

/** One logger per request, with a request id, passed down through `ctx.state.log` (no pino child: see withBindings). */
export function requestLogger(logger: Logger) {
  return async (ctx: Context, next: Next) => {
    const reqId = (ctx.get('x-request-id') || randomUUID()).slice(0, 64);
    ctx.state.log = withBindings(logger, { reqId });
    ctx.set('x-request-id', reqId);
    await next();
  };
}

/**
 * Turns errors into responses in one place: refusals keep their status (403, 400, 413, 404),
 * anything else is a 500 that is logged with its stack. A refusal never echoes the request.
 */
export function errorResponder() {
  return async (ctx: Context, next: Next) => {
    try {
      await next();
    } catch (err) {
      const log = ctx.state.log as Logger;
      const status = err instanceof AppError ? err.status : (err as { status?: number }).status;
      if (status && status >= 400 && status < 500) {
        log.warn({ status, code: (err as AppError).code, reason: (err as Error).message }, 'request refused');
        ctx.status = status;
        ctx.type = 'text/plain';
        ctx.body = httpReason(status);
        return;
      }
      log.error({ err }, 'request failed');
      ctx.status = 503;
      ctx.type = 'text/plain';
      ctx.body = 'unavailable';
    }
  };
}

function httpReason(status: number): string {
  const reasons: Record<number, string> = { 400: 'bad request', 403: 'forbidden', 404: 'not found', 413: 'payload too large' };
  return reasons[status] ?? 'refused';
}
