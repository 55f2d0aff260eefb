import type { Logger } from '@wxdify/core';
import type { WeChatApi } from './wechat-api.js';

/** WeChat shows "typing…" for about 15 s after each Typing command. */
const REFRESH_MS = 10_000;

/**
 * Shows the typing indicator while Dify works, from `delayMs` on (a fast answer needs none),
 * refreshed until `stop()`, which cancels it if it was shown. Failures only log: the indicator
 * is a courtesy, never a reason to fail the answer.
 */
export function startTyping(api: WeChatApi, openId: string, log: Logger, delayMs = 1500): { stop(): Promise<void> } {
  let shown = false;
  let stopped = false;
  const show = () => {
    if (stopped) return;
    shown = true;
    api.typing(openId, true).catch((err) => log.warn({ err: (err as Error).message }, 'typing indicator failed'));
  };
  const first = setTimeout(() => {
    show();
    refresh = setInterval(show, REFRESH_MS);
  }, delayMs);
  let refresh: NodeJS.Timeout | undefined;
  return {
    async stop() {
      stopped = true;
      clearTimeout(first);
      clearInterval(refresh);
      if (shown) await api.typing(openId, false).catch((err) => log.warn({ err: (err as Error).message }, 'cancel typing failed'));
    },
  };
}
