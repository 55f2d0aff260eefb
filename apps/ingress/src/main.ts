import { ConfigError, createLogger, loadConfig } from '@wxdify/core';
import { startIngress } from './ingress.js';

const logger = createLogger({ level: process.env.LOG_LEVEL, name: 'ingress' });
try {
  const config = loadConfig(process.env);
  const ingress = await startIngress(config, logger.child({}), { port: config.port ?? 8080 });
  const stop = async (signal: string) => {
    logger.info({ signal }, 'shutting down');
    await ingress.close({ drainDelayMs: 1000 });
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
