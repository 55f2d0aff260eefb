import Router from '@koa/router';
import getRawBody from 'raw-body';
import {
  RequestRejectedError,
  buildImageReplyXml,
  buildTextReplyXml,
  checkSignature,
  decodeRequest,
  encodeReply,
  verifyEcho,
  withBindings,
  type AccountConfig,
  type DeliveryPath,
  type InboundMessage,
  type Logger,
  type Metrics,
} from '@wxdify/core';
import type { Context } from 'koa';
import { answerAttempt, cappedOutcome, replyCap, type AttemptProgress, type Outcome, type ReplyFlowDeps } from '../reply-flow.js';

/** WeChat bodies are a few KiB; CONTRACT.md refuses anything over 1 MiB with 413. */
const BODY_LIMIT = 1024 * 1024;

type Query = Record<string, string | undefined>;

/** `GET|POST /wechat/:account` and `/wechat` (= `default`). */
export function createWeChatRouter(deps: ReplyFlowDeps & { metrics: Metrics }): Router {
  const router = new Router();
  const account = (ctx: Context): AccountConfig => {
    const id = (ctx.params as { account?: string }).account ?? 'default';
    const found = deps.config.accounts.get(id);
    if (!found) throw new RequestRejectedError('unknown_account', 404, `unknown account ${id}`);
    return found;
  };

  const verify = (ctx: Context) => {
    ctx.type = 'text/plain';
    ctx.body = verifyEcho(account(ctx), ctx.query as Query);
  };
  const receive = async (ctx: Context) => {
    const arrivedAt = Date.now();
    const acct = account(ctx);
    const query = ctx.query as Query;
    const body = await readBody(ctx, () => checkSignature(acct, query));
    const { message, encrypted } = decodeRequest(acct, query, body);
    const log = withBindings(ctx.state.log as Logger, { account: acct.id, msgId: message.msgId, msgType: message.msgType });
    // WeChat hung up (cut at 5 s, or gone), or the cap below answered: stop waiting, take nothing.
    const closed = new AbortController();
    ctx.res.once('close', () => {
      if (!ctx.res.writableFinished) closed.abort();
    });
    const progress: AttemptProgress = {};
    const work = answerAttempt(deps, acct, message, arrivedAt, log, closed.signal, progress);
    let outcome = await beforeCap(work, replyCap(deps.config, arrivedAt));
    if (!outcome) {
      // Redis (or something) is too slow: answer now, WeChat cuts the request soon. The attempt
      // sees the abort and hands over whatever it is granted after this (reclaim, SETTLE_LUA).
      closed.abort();
      work.catch((err: unknown) => log.warn({ err }, 'attempt failed after the cap answered'));
      outcome = cappedOutcome(acct, progress);
      log.warn({ attempt: progress.attempt, ms: Date.now() - arrivedAt }, 'no outcome before the cap');
    }
    respond(ctx, acct, message, encrypted, outcome);
    observe(deps.metrics, acct.id, message, outcome);
    log.info({ outcome: outcome.kind, attempt: outcome.attempt, ms: Date.now() - arrivedAt }, 'answered');
  };

  router.get('/wechat', verify);
  router.get('/wechat/:account', verify);
  router.post('/wechat', receive);
  router.post('/wechat/:account', receive);
  return router;
}

/** The attempt's outcome, or undefined when `cap` (ms epoch) comes first. */
async function beforeCap(work: Promise<Outcome>, cap: number): Promise<Outcome | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), Math.max(0, cap - Date.now()))));
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function observe(metrics: Metrics, account: string, message: InboundMessage, outcome: Outcome) {
  const attempt = outcome.attempt ?? 1;
  if (attempt === 1) metrics.messagesReceived.inc({ account, type: message.kind === 'event' ? `event:${message.event}` : message.kind });
  metrics.attempts.inc({ attempt: String(attempt), outcome: outcome.kind });
  // Only a reply with a `path` delivers an answer (not a later part of one, nor a service message).
  if (outcome.kind !== 'reply' || !outcome.path) return;
  const path: DeliveryPath = outcome.path === 'fetched' ? 'fetched' : (`passive_${Math.min(attempt, 3)}` as DeliveryPath);
  metrics.answersDelivered.inc({ account, path });
  if (outcome.firstAt) metrics.answerLatency.observe({ path }, (Date.now() - outcome.firstAt) / 1000);
}

/** Reads the body of a request that passed the size check by Content-Length, then `verify`; a refused body is never read. */
async function readBody(ctx: Context, verify: () => void): Promise<string> {
  const length = ctx.request.length;
  try {
    if (length !== undefined && length > BODY_LIMIT) {
      throw new RequestRejectedError('body_too_large', 413, 'body over 1 MiB');
    }
    verify();
  } catch (err) {
    // Node would read the unread body to the end (and discard it) to keep the connection alive: close it instead.
    ctx.set('Connection', 'close');
    throw err;
  }
  try {
    return await getRawBody(ctx.req, { length, limit: BODY_LIMIT, encoding: 'utf8' });
  } catch (err) {
    const status = (err as { status?: number }).status;
    if (status === 413) throw new RequestRejectedError('body_too_large', 413, 'body over 1 MiB', err);
    throw new RequestRejectedError('bad_request', 400, 'unreadable body', err);
  }
}

function respond(ctx: Context, account: AccountConfig, message: InboundMessage, encrypted: boolean, outcome: Outcome) {
  if (outcome.kind === 'retry') {
    // Not `success`: WeChat must come back with its next attempt (see README, "WeChat's retries").
    ctx.status = 503;
    ctx.body = '';
    return;
  }
  ctx.type = 'text/plain';
  if (outcome.kind === 'success') {
    ctx.body = 'success';
    return;
  }
  const to = { toUser: message.fromUserName, fromUser: message.toUserName };
  const xml =
    outcome.part.type === 'text'
      ? buildTextReplyXml({ ...to, content: outcome.part.text })
      : buildImageReplyXml({ ...to, mediaId: outcome.part.mediaId });
  ctx.type = 'application/xml';
  ctx.body = encodeReply(account, xml, encrypted);
}
