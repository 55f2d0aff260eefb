import { ConfigError, createLogger, loadConfig } from '@wxdify/core';
import { startWorker } from './worker.js';

const logger = createLogger({ level: process.env.LOG_LEVEL, name: 'worker' });
try {
  const config = loadConfig(process.env);
  const worker = await startWorker(config, logger, { port: config.port ?? 8081 });
  const stop = async (signal: string) => {
    logger.info({ signal }, 'shutting down');
    await worker.close(config.shutdownGraceMs);
    logger.info('stopped');
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
} catch (err) {
  if (err instanceof ConfigError) {
    logger.fatal(err.message);
    process.exit(1);
  }
  throw err;
}
