import type { Job } from 'bullmq';
import {
  AppError,
  hasAttemptLeft,
  messagesFor,
  shapeAnswer,
  splitText,
  ANSWER_PART_MAX_BYTES,
  type AccountConfig,
  type AnswerJobData,
  type AnswerPart,
  type ConversationRef,
  type ConversationStore,
  type DifyAnswer,
  type DifyClient,
  type DifyFileInput,
  type InboundMessage,
  type Logger,
  type Metrics,
  type Translate,
} from '@wxdify/core';
import { buildDifyRequest } from './dify-request.js';
import { collectAnswerFiles, ImagePrefetch, uploadAnswerImages, type AnswerFile } from './media.js';
import { transcribeVoice } from './voice.js';
import type { WeChatApi } from './wechat-api.js';

export interface AskDifyDeps {
  conversations: ConversationStore;
  difyFor: (account: AccountConfig) => DifyClient;
  /** The account's WeChat API: voice download, answer image upload (only with an AppSecret). */
  wechatFor: (account: AccountConfig) => WeChatApi;
  metrics: Metrics;
}

interface AskContext {
  deps: AskDifyDeps;
  account: AccountConfig;
  tr: Translate;
  log: Logger;
  /** Another job attempt remains, so a transient failure may be thrown for BullMQ to retry. */
  mayRetry: boolean;
  signal?: AbortSignal;
  /** Dify failures already counted in wxdify_dify_errors_total, try by try. */
  counted: WeakSet<AppError>;
  /** The follower's conversation, read by the caller once the job's turn came. */
  conversation: ConversationRef;
  /** Where Dify's files come from (relative URLs in answers resolve against it). */
  difyOrigin: string;
}

/**
 * Asks Dify for the answer to one message and shapes it into WeChat parts: the text parts, then
 * the answer's images as uploaded temporary media. The conversation id is saved as soon as Dify
 * sends it. Retryable failures are thrown for BullMQ to retry (while attempts remain); anything
 * else becomes a short apology in the follower's language, with Dify's code and text only logged.
 */
export async function askDify(
  deps: AskDifyDeps,
  account: AccountConfig,
  job: Job<AnswerJobData>,
  log: Logger,
  conversation: ConversationRef,
  signal?: AbortSignal,
): Promise<AnswerPart[]> {
  const tr = messagesFor(account);
  const mayRetry = hasAttemptLeft(job);
  const difyOrigin = new URL(account.difyApiBaseUrl).origin;
  const ctx: AskContext = { deps, account, tr, log, mayRetry, counted: new WeakSet(), conversation, difyOrigin, ...(signal ? { signal } : {}) };
  try {
    return await answer(ctx, job.data.message);
  } catch (err) {
    if (signal?.aborted) throw err;
    if (err instanceof AppError && err.retryable && mayRetry) throw err;
    const code = err instanceof AppError ? err.code : 'internal';
    // a failed Dify try was counted when it happened; this counts the other failures once
    if (!(err instanceof AppError && ctx.counted.has(err))) deps.metrics.difyErrors.inc({ code });
    log.error({ err, code, status: (err as AppError).status }, 'dify failed; answering with an apology');
    const timedOut = err instanceof AppError && err.code === 'dify_timeout';
    return [textPart(timedOut ? tr('difyTimeout') : tr('difyError'))];
  }
}

async function answer(ctx: AskContext, message: InboundMessage): Promise<AnswerPart[]> {
  const { deps, account, log, signal } = ctx;
  const dify = deps.difyFor(account);
  const wechat = account.appSecret ? deps.wechatFor(account) : undefined;
  const transcript = message.kind === 'voice' && !message.recognition?.trim()
    ? await transcribeVoice({ wechat, dify }, message, log, { mayRetry: ctx.mayRetry, ...(signal ? { signal } : {}) })
    : undefined;
  const request = buildDifyRequest(message, { tr: ctx.tr, welcomeMessage: account.welcomeMessage, transcript });
  if (request.directAnswer) return [textPart(request.directAnswer)];

  // Vision: WeChat's PicUrl as a remote file; Dify fetches it itself (apps without vision get the text only).
  const files: DifyFileInput[] | undefined = request.imageUrl && (await dify.acceptsImages())
    ? [{ type: 'image', transfer_method: 'remote_url', url: request.imageUrl }]
    : undefined;
  const { conversation, difyOrigin } = ctx;
  const prefetch = wechat ? new ImagePrefetch({ difyOrigin, ...(signal ? { signal } : {}) }) : undefined;
  const reply = await dify.ask({
    query: request.query,
    user: message.fromUserName,
    inputs: request.inputs,
    conversationId: conversation.id,
    ...(files ? { files } : {}),
    ...(signal ? { signal } : {}),
    logger: log,
    onFile: (file) => prefetch?.add(file),
    onTryFailed: (err) => {
      ctx.counted.add(err);
      deps.metrics.difyErrors.inc({ code: err.code });
    },
    onConversationId: async (id) => {
      if (id !== conversation.id) await deps.conversations.save(account.id, message.fromUserName, conversation, id);
    },
  });
  if (reply.firstEventMs !== undefined) deps.metrics.difyFirstEvent.observe(reply.firstEventMs / 1000);
  deps.metrics.difyDuration.observe(reply.totalMs / 1000);
  return toParts(ctx, reply, wechat, prefetch);
}

/**
 * Text first (split for WeChat), then one image part per uploaded image: the passive reply is the
 * text, or the image when that is the whole answer. Files that could not become image messages
 * are linked at the end of the text.
 */
async function toParts(ctx: AskContext, reply: DifyAnswer, wechat: WeChatApi | undefined, prefetched: ImagePrefetch | undefined): Promise<AnswerPart[]> {
  const { difyOrigin } = ctx;
  const shaped = shapeAnswer(reply.text, { difyOrigin });
  const files = collectAnswerFiles(reply.files, shaped.images);
  const { mediaIds, links } = await uploadAnswerImages(wechat, files, { difyOrigin, log: ctx.log, prefetched, ...(ctx.signal ? { signal: ctx.signal } : {}) });
  const linkText = links.filter((f) => !shaped.text.includes(new URL(f.url).pathname)).map((f) => linkTo(f, ctx.tr)).join('\n');
  const text = [shaped.text, linkText].filter(Boolean).join('\n\n');
  const parts: AnswerPart[] = [
    ...(text ? splitText(text, ANSWER_PART_MAX_BYTES).map(textPart) : []),
    ...mediaIds.map((mediaId): AnswerPart => ({ type: 'image', mediaId })),
  ];
  if (files.length > 0) ctx.log.info({ files: files.length, images: mediaIds.length, links: links.length }, 'answer files handled');
  return parts.length > 0 ? parts : [textPart(ctx.tr('difyError'))];
}

/** WeChat text shows `<a href>` links; the label is the file's name or a localized "view image". */
function linkTo(file: AnswerFile, tr: Translate): string {
  const label = (file.image ? undefined : file.filename?.replace(/[<>]/g, '')) || tr(file.image ? 'imageLink' : 'fileLink');
  return `<a href="${file.url.replaceAll('"', '%22')}">${label}</a>`;
}

function textPart(text: string): AnswerPart {
  return { type: 'text', text };
}
