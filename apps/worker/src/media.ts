import got from 'got';
import type { DifyAnswerFile, Logger } from '@wxdify/core';
import { readCapped, TooLargeError, type CappedBody } from './read-capped.js';
import { TEMP_MEDIA_LIMITS, type WeChatApi } from './wechat-api.js';

/**
 * WeChat's temporary image limit: a bigger image is not even downloaded in full. 10 MB per the
 * upload doc's list; where an account still enforces the 2 MB of older copies (research/wechat.md
 * §4.5), WeChat answers 40009 and the image is sent as a link instead.
 */
export const WECHAT_IMAGE_MAX_BYTES = TEMP_MEDIA_LIMITS.image.maxBytes;
/** A follower message buys 5 customer-service messages: more images than that are sent as links. */
export const MAX_ANSWER_IMAGES = 5;
const FETCH_TIMEOUT_MS = 15_000;

/** The formats WeChat takes for image messages, recognised by their first bytes, not by headers. */
const IMAGE_FORMATS = [
  { ext: 'png', contentType: 'image/png', magic: Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]) },
  { ext: 'jpg', contentType: 'image/jpeg', magic: Buffer.from([0xff, 0xd8, 0xff]) },
  { ext: 'gif', contentType: 'image/gif', magic: Buffer.from('GIF8', 'latin1') },
] as const;
const IMAGE_PATH = /\.(png|jpe?g|gif|webp|bmp|svg)$/i;

/** A file of an answer: an image to send as an image message, or any file to link in the text. */
export interface AnswerFile {
  url: string;
  image: boolean;
  filename?: string;
}

/** What became of an answer's files: uploaded images (in order) and the files left as links. */
export interface DeliveredFiles {
  mediaIds: string[];
  links: AnswerFile[];
}

type Outcome = { mediaId: string } | { link: true } | { dropped: true };

/**
 * The files of an answer in order: those Dify sent as files (message_file, message_end, workflow
 * outputs), then the markdown images of the text; one per URL path (the same file comes through
 * several channels with different signatures); http(s) URLs only.
 */
export function collectAnswerFiles(files: readonly DifyAnswerFile[], markdownImages: readonly string[]): AnswerFile[] {
  const seen = new Set<string>();
  const out: AnswerFile[] = [];
  const add = (file: AnswerFile): void => {
    const key = pathKey(file.url);
    // only web URLs can be fetched or opened by the follower (not data:, not unparsable text)
    if (!/^https?:\/\//i.test(key) || seen.has(key)) return;
    seen.add(key);
    out.push(file);
  };
  for (const f of files) add({ url: f.url, image: isImageFile(f), ...(f.filename ? { filename: f.filename } : {}) });
  for (const url of markdownImages) add({ url, image: true });
  return out;
}

/**
 * Image downloads started while Dify is still streaming: Dify signs a file URL for 5 minutes when it
 * sends it, and a long answer can outlast that, so a `message_file` image is fetched the moment its
 * event arrives rather than after the stream. Only images that would be sent are fetched (WeChat's
 * count and size limits, Dify's origin or https); errors surface when the answer's images are delivered.
 */
export class ImagePrefetch {
  readonly #started = new Map<string, Promise<CappedBody>>();

  constructor(private readonly opts: { difyOrigin: string; signal?: AbortSignal }) {}

  /** Starts fetching `file` if it is an image worth fetching and not fetched yet. */
  add(file: DifyAnswerFile): void {
    const key = pathKey(file.url);
    if (!key || !isImageFile(file) || this.#started.has(key) || this.#started.size >= MAX_ANSWER_IMAGES) return;
    const url = new URL(file.url);
    if (!mayFetch(url, this.opts.difyOrigin)) return;
    const body = fetchImage(url, this.opts.signal);
    body.catch(() => undefined); // handled by whoever takes it; an answer that fails never does
    this.#started.set(key, body);
  }

  /** The download started for `url`'s path, if any. */
  take(url: string): Promise<CappedBody> | undefined {
    return this.#started.get(pathKey(url));
  }
}

/**
 * Fetches each image at once (Dify signs file URLs for 5 minutes) unless `prefetched` already
 * started it, checks WeChat's size limit and formats, and uploads it as temporary media. An image that cannot be sent that way is kept as a
 * link (too big, another format, upload refused, no AppSecret) or dropped when even fetching it
 * failed (expired or unreachable: the follower could not open it either). Never throws: the
 * answer exists already and must not be asked again.
 */
export async function uploadAnswerImages(
  wechat: WeChatApi | undefined,
  files: readonly AnswerFile[],
  opts: { difyOrigin: string; log: Logger; signal?: AbortSignal; prefetched?: ImagePrefetch | undefined },
): Promise<DeliveredFiles> {
  const images = files.filter((f) => f.image);
  const links = files.filter((f) => !f.image);
  if (images.length > 0 && !wechat) opts.log.warn({ images: images.length }, 'no WECHAT_APP_SECRET to upload answer images; sending links');
  const outcomes = await Promise.all(images.map((file, i): Promise<Outcome> => {
    if (!wechat || i >= MAX_ANSWER_IMAGES) return Promise.resolve({ link: true });
    return deliverImage(wechat, file, opts);
  }));
  const mediaIds: string[] = [];
  outcomes.forEach((o, i) => {
    if ('mediaId' in o) mediaIds.push(o.mediaId);
    else if ('link' in o) links.push(images[i]!);
  });
  return { mediaIds, links };
}

/** The image format of `bytes` if WeChat takes it. */
export function sniffImage(bytes: Buffer): (typeof IMAGE_FORMATS)[number] | undefined {
  return IMAGE_FORMATS.find((f) => bytes.subarray(0, f.magic.length).equals(f.magic));
}

/** Answers may carry any URL a model wrote: only Dify's own files and public https ones are fetched. */
function mayFetch(url: URL, difyOrigin: string): boolean {
  return url.origin === difyOrigin || url.protocol === 'https:';
}

async function deliverImage(wechat: WeChatApi, file: AnswerFile, opts: { difyOrigin: string; log: Logger; signal?: AbortSignal; prefetched?: ImagePrefetch | undefined }): Promise<Outcome> {
  const where = pathKey(file.url);
  const url = new URL(file.url);
  if (!mayFetch(url, opts.difyOrigin)) {
    opts.log.warn({ image: where }, 'answer image not fetched (not on Dify and not https); sending a link');
    return { link: true };
  }
  let body;
  try {
    body = await (opts.prefetched?.take(file.url) ?? fetchImage(url, opts.signal));
  } catch (err) {
    if (err instanceof TooLargeError) {
      opts.log.warn({ image: where, limit: err.limit }, 'answer image over WeChat\'s size limit; sending a link');
      return { link: true };
    }
    // Not got's message: it holds the whole URL, with the signature Dify put in its query.
    const { code, response } = err as { code?: string; response?: { statusCode?: number } };
    opts.log.warn({ image: where, code, status: response?.statusCode }, 'answer image could not be fetched; dropped');
    return { dropped: true };
  }
  const format = sniffImage(body.bytes);
  if (!format) {
    opts.log.warn({ image: where, contentType: body.contentType }, 'answer image is not PNG, JPEG or GIF; sending a link');
    return { link: true };
  }
  try {
    const mediaId = await wechat.uploadTempMedia('image', body.bytes, `answer.${format.ext}`, format.contentType);
    opts.log.info({ image: where, bytes: body.bytes.length, mediaId }, 'answer image uploaded');
    return { mediaId };
  } catch (err) {
    opts.log.warn({ image: where, err: (err as Error).message, errcode: (err as { errcode?: number }).errcode }, 'answer image upload failed; sending a link');
    return { link: true };
  }
}

/** The image's bytes, read no further than WeChat's limit. */
function fetchImage(url: URL, signal: AbortSignal | undefined): Promise<CappedBody> {
  const stream = got.stream(url, { timeout: { request: FETCH_TIMEOUT_MS }, retry: { limit: 0 }, maxRedirects: 3, ...(signal ? { signal } : {}) });
  return readCapped(stream, WECHAT_IMAGE_MAX_BYTES);
}

function isImageFile(f: DifyAnswerFile): boolean {
  if (f.type !== undefined) return f.type === 'image';
  if (f.mimeType !== undefined) return f.mimeType.startsWith('image/');
  return IMAGE_PATH.test(pathKey(f.url));
}

/** Origin and path: the signature in the query changes between channels and must not be logged. */
function pathKey(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '';
  }
}
