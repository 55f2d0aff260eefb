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
  stopDeadlineMs: (config: Config) => number,
): Promise<void> {
  // At `info` until LOG_LEVEL is validated with the rest: a bad level must be named like any bad field, not crash pino.
  const logger = createLogger({ level: 'info', name });
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    logger.fatal(err.message);
    process.exit(1);
  }
  logger.level = config.logLevel;
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection'));
  const stop = await start(config, logger);
  const shutdown = async (signal: string) => {
    logger.info({ signal }, 'shutting down');
    // BullMQ's close() waits for Redis; during an outage nothing is left to save, so do not hang.
    const deadline = stopDeadlineMs(config);
    const timer = new Promise<'late'>((resolve) => setTimeout(resolve, deadline, 'late').unref());
    const result = await Promise.race([stop().then(() => 'stopped' as const), timer]);
    if (result === 'late') logger.warn({ deadlineMs: deadline }, 'could not stop cleanly in time (is Redis down?); exiting');
    else logger.info('stopped');
    logger.flush();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
}
