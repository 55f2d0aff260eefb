import { runService } from '@wxdify/core';
import { startIngress } from './ingress.js';

await runService('ingress', async (config, logger) => {
  const ingress = await startIngress(config, logger, { port: config.port ?? 8080 });
  // Load balancers see /readyz turn 503 for a second before the listener closes.
  return () => ingress.close({ drainDelayMs: 1000 });
}, (config) => config.wechatTimeoutMs + 4000);
