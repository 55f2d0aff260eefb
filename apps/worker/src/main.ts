import { runService } from '@wxdify/core';
import { startWorker } from './worker.js';

await runService('worker', async (config, logger) => {
  const worker = await startWorker(config, logger, { port: config.port ?? 8081 });
  return () => worker.close(config.shutdownGraceMs);
}, (config) => config.shutdownGraceMs + 10_000);
