import type { AccountConfig } from './config.js';
import { resolveMessages, type Translate } from './i18n/index.js';

const cache = new WeakMap<AccountConfig, Translate>();

/** The service's own texts for an account: its LANGUAGE, with its configured texts winning. */
export function messagesFor(account: AccountConfig): Translate {
  let tr = cache.get(account);
  if (!tr) cache.set(account, (tr = resolveMessages(account.language, account)));
  return tr;
}
