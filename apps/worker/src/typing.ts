import type { Logger } from '@wxdify/core';
import type { WeChatApi } from './wechat-api.js';

/**
 * WeChat keeps "typing…" for 15 s and refuses a new Typing command meanwhile; a message sent to
 * the follower ends it at once.
 * https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Service_Center_messages.html (客服输入状态)
 */
const REFRESH_MS = 15_000;
/** "typing…" shows from this long after a job starts: a fast answer needs none (and costs no API call). */
const SHOW_AFTER_MS = 1500;
/**
 * A CancelTyping is a courtesy, not part of the answer: it goes out this long after the answer is
 * stored, so that in a burst of answers ending together the deliveries come first (a CancelTyping
 * right away cost each of 300 simultaneous answers 150-300 ms more on the bench's slow path).
 * Shorter than SHOW_AFTER_MS: the follower's next answer starts only once this one is stored, so
 * its indicator comes after this cancel, never before it.
 */
export const CANCEL_AFTER_MS = 1000;

/** The typing indicator of one answer; see startTyping. */
export interface Typing {
  /** Stops refreshing. `cancel`: also withdraw it now (the answer is not pushed to the follower). */
  stop(opts: { cancel: boolean }): void;
}

/**
 * Shows the typing indicator while Dify works, from `delayMs` on (a fast answer needs none),
 * refreshed every 15 s, unless `blocked()` says WeChat refuses the account's customer-service
 * calls (48001: the call would only fail). A pushed answer ends the indicator by itself; an answer
 * that goes out passively or waits for `1` withdraws it with CancelTyping ({@link CANCEL_AFTER_MS}
 * later), if Typing was sent.
 * Calls go out one after another, so a CancelTyping never overtakes its Typing. Failures only
 * log: the indicator is a courtesy, never a reason to fail or delay the answer.
 */
export function startTyping(api: WeChatApi, openId: string, log: Logger, opts: { delayMs?: number; blocked?: () => Promise<boolean> } = {}): Typing {
  let shown = false;
  let requested = false;
  let stopped = false;
  let queue: Promise<void> = Promise.resolve();
  const send = (on: boolean) =>
    api.typing(openId, on).catch((err) => log.warn({ err: (err as Error).message, on }, 'typing indicator failed'));
  const isBlocked = () => (opts.blocked ? opts.blocked().catch(() => true) : Promise.resolve(false));
  const show = () => {
    requested = true;
    queue = queue.then(async () => {
      if (stopped || (await isBlocked())) return;
      if (stopped) return; // stop() came while Redis answered
      shown = true;
      await send(true);
    });
  };
  let refresh: NodeJS.Timeout | undefined;
  const first = setTimeout(() => {
    show();
    refresh = setInterval(show, REFRESH_MS);
  }, opts.delayMs ?? SHOW_AFTER_MS);
  return {
    stop({ cancel }) {
      stopped = true;
      clearTimeout(first);
      clearInterval(refresh);
      if (!cancel || !requested) return;
      setTimeout(() => {
        queue = queue.then(() => (shown ? send(false) : undefined));
      }, CANCEL_AFTER_MS).unref();
    },
  };
}
