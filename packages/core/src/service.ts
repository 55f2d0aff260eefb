import { loadConfig, type Config } from './config.js';
import { ConfigError } from './errors.js';
import { createLogger, type Logger } from './logger.js';

/**
 * Runs a production entry point: loads the configuration (exit 1 naming every bad field), starts
 * the service, and stops it cleanly on SIGTERM/SIGINT (exit 0). Unexpected rejections are logged,
 * never swallowed.
 */
export async function runService(
  name: 'ingress' | 'worker',
  start: (config: Config, logger: Logger) => Promise<() => Promise<void>>,
): Promise<void> {
  const logger = createLogger({ level: process.env.LOG_LEVEL || 'info', name });
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    logger.fatal(err.message);
    process.exit(1);
  }
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection'));
  const stop = await start(config, logger);
  const shutdown = async (signal: string) => {
    logger.info({ signal }, 'shutting down');
    await stop();
    logger.info('stopped');
    logger.flush();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
}
