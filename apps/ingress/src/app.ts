import Router from '@koa/router';
import Koa from 'koa';
import { renderMetrics, type Logger, type Metrics } from '@wxdify/core';
import { createAdminMiddleware } from './routes/admin.js';
import { errorResponder, requestLogger } from './middleware/errors.js';
import { createWeChatRouter } from './routes/wechat.js';
import type { ReplyFlowDeps } from './reply-flow.js';

export interface IngressAppDeps extends ReplyFlowDeps {
  logger: Logger;
  metrics: Metrics;
  /** True while Redis answers and the process is not shutting down. */
  isReady: () => Promise<boolean>;
}

/** The Koa app of the ingress; the middleware order is the order below. */
export async function createIngressApp(deps: IngressAppDeps): Promise<Koa> {
  const app = new Koa({ proxy: true });
  app.silent = true;
  app.use(requestLogger(deps.logger));
  app.use(errorResponder());

  const health = new Router();
  health.get('/healthz', (ctx) => {
    ctx.body = 'ok';
  });
  health.get('/readyz', async (ctx) => {
    const ready = await deps.isReady();
    ctx.status = ready ? 200 : 503;
    ctx.body = ready ? 'ready' : 'not ready';
  });
  health.get('/metrics', async (ctx) => {
    ctx.type = deps.metrics.registry.contentType;
    ctx.body = await renderMetrics(deps.metrics, [deps.queue, deps.pushQueue]);
  });
  app.use(health.routes());
  for (const mw of await createAdminMiddleware(deps.config, [deps.queue, deps.pushQueue])) app.use(mw);
  const wechat = createWeChatRouter(deps);
  app.use(wechat.routes());
  app.use(wechat.allowedMethods());
  return app;
}
