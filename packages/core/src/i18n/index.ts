import { LANGUAGES, MESSAGES } from './messages.js';
import type { Language, MessageKey, MessageParams, Messages } from './messages.js';

export { LANGUAGES, MESSAGES };
export type { Language, MessageKey, MessageParams, Messages };

/** Arguments after the key: the parameters object for messages with placeholders, else none. */
export type MessageArgs<K extends MessageKey> = K extends keyof MessageParams
  ? [params: MessageParams[K]]
  : [];

/** A message lookup bound to one language and its configured overrides. */
export type Translate = <K extends MessageKey>(key: K, ...args: MessageArgs<K>) => string;

/** Texts an operator may configure instead of the catalogue's. */
export interface MessageOverrides {
  timeoutMessage?: string | undefined;
  /** May contain `{left}`; without it the text is sent as it is. */
  continueWaitingMessage?: string | undefined;
  welcomeMessage?: string | undefined;
}

const OVERRIDE_KEYS = {
  timeoutMessage: 'timeout',
  continueWaitingMessage: 'continueWaiting',
  welcomeMessage: 'welcome',
} as const satisfies Record<keyof MessageOverrides, MessageKey>;

/** True when `value` names a supported language. */
export function isLanguage(value: string): value is Language {
  return (LANGUAGES as readonly string[]).includes(value);
}

/** The message `key` in `lang`, with its placeholders filled. */
export function t<K extends MessageKey>(lang: Language, key: K, ...args: MessageArgs<K>): string {
  return fillPlaceholders(MESSAGES[lang][key], args[0]);
}

/** A {@link Translate} for `lang` where configured texts win over the catalogue. */
export function resolveMessages(lang: Language, overrides: MessageOverrides = {}): Translate {
  const texts: Record<MessageKey, string> = { ...MESSAGES[lang] };
  for (const [option, key] of Object.entries(OVERRIDE_KEYS)) {
    const configured = overrides[option as keyof MessageOverrides];
    if (configured !== undefined && configured.trim() !== '') texts[key] = configured;
  }
  return (key, ...args) => fillPlaceholders(texts[key], args[0]);
}

/** Replaces each `{name}` that has a parameter; unknown placeholders stay as written. */
function fillPlaceholders(template: string, params: object | undefined): string {
  if (params === undefined) return template;
  const values = params as Record<string, string | number>;
  return template.replace(/\{(\w+)\}/g, (whole, name: string) =>
    Object.hasOwn(values, name) ? String(values[name]) : whole,
  );
}
