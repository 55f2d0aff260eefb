import type { Logger } from '@wxdify/core';
import type { WeChatApi } from './wechat-api.js';

/**
 * WeChat keeps "typing…" for 15 s and refuses a new Typing command meanwhile; a message sent to
 * the follower ends it at once.
 * https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Service_Center_messages.html (客服输入状态)
 */
const REFRESH_MS = 15_000;

/** The typing indicator of one answer; see startTyping. */
export interface Typing {
  /** Stops refreshing. `cancel`: also withdraw it now (the answer is not being sent to the follower). */
  stop(opts: { cancel: boolean }): void;
}

/**
 * Shows the typing indicator while Dify works, from `delayMs` on (a fast answer needs none),
 * refreshed every 15 s. When the answer goes out, the message itself ends the indicator, so an
 * explicit CancelTyping is only sent when the answer waits for the follower's `1`. Failures only
 * log: the indicator is a courtesy, never a reason to fail or delay the answer.
 */
export function startTyping(api: WeChatApi, openId: string, log: Logger, delayMs = 1500): Typing {
  let shown = false;
  let stopped = false;
  const send = (on: boolean) =>
    api.typing(openId, on).catch((err) => log.warn({ err: (err as Error).message, on }, 'typing indicator failed'));
  const show = () => {
    if (stopped) return;
    shown = true;
    void send(true);
  };
  let refresh: NodeJS.Timeout | undefined;
  const first = setTimeout(() => {
    show();
    refresh = setInterval(show, REFRESH_MS);
  }, delayMs);
  return {
    stop({ cancel }) {
      stopped = true;
      clearTimeout(first);
      clearInterval(refresh);
      if (shown && cancel) void send(false);
    },
  };
}
