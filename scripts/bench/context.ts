import type { Client } from './load.js';
import type { BenchOptions } from './options.js';

/** What every phase of one bench run shares. */
export interface BenchContext {
  opts: BenchOptions;
  /** The run's temp dir: logs, the AOF, profiles. */
  dir: string;
  /** The load generator's HTTP client. */
  client: Client;
}
