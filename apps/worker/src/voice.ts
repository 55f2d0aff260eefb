import { RequestError } from 'got';
import { AppError, type DifyClient, type Logger, type VoiceMessage } from '@wxdify/core';
import { transcodeToMp3 } from './ffmpeg.js';
import type { WeChatApi } from './wechat-api.js';

/** What turning a voice message into text needs; `wechat` is absent when the account has no AppSecret. */
export interface VoiceDeps {
  wechat: WeChatApi | undefined;
  dify: DifyClient;
  /** The ffmpeg binary (tests); `ffmpegPath()` otherwise. */
  ffmpeg?: string;
}

/** A WeChat voice is at most 2 MB; the download is capped a little above. */
const VOICE_MAX_BYTES = 4 * 1024 * 1024;

/**
 * The text of a voice message when WeChat sent no `Recognition`: the AMR file is downloaded with
 * `media/get`, transcoded to MP3 and sent to Dify's speech-to-text. Returns undefined when that is
 * not possible (no AppSecret, media gone, no transcoder, speech-to-text off in Dify, empty
 * transcript); the reason goes to the log. Transient failures (network, 5xx, WeChat busy) are
 * thrown while `mayRetry`, so the job is retried before Dify's chat is ever asked.
 *
 * Speex: the high-definition `media/get/jssdk` only serves voice recorded through JS-SDK, in
 * WeChat's own framing ("audio/x-speex-with-header-byte") that ffmpeg cannot read without
 * WeChat's C decoder; the 8 kHz AMR of `media/get` is what every voice message has.
 */
export async function transcribeVoice(
  deps: VoiceDeps,
  message: VoiceMessage,
  log: Logger,
  opts: { mayRetry: boolean; signal?: AbortSignal },
): Promise<string | undefined> {
  if (!deps.wechat) {
    log.warn('voice without recognition and no WECHAT_APP_SECRET to download it');
    return undefined;
  }
  if (!message.mediaId) return undefined;
  try {
    const started = Date.now();
    const voice = await deps.wechat.downloadMedia(message.mediaId, VOICE_MAX_BYTES);
    const mp3 = await transcodeToMp3(voice.bytes, { ...(opts.signal ? { signal: opts.signal } : {}), ...(deps.ffmpeg ? { binary: deps.ffmpeg } : {}) });
    const text = (await deps.dify.audioToText(mp3, message.fromUserName, opts.signal ? { signal: opts.signal } : {})).trim();
    log.info({ ms: Date.now() - started, format: message.format, voiceBytes: voice.bytes.length, mp3Bytes: mp3.length, chars: text.length }, 'voice transcribed');
    return text || undefined;
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    if (opts.mayRetry && isTransient(err)) {
      throw err instanceof AppError ? err : new AppError('wechat_api', `voice download failed: ${(err as Error).message}`, { retryable: true, cause: err });
    }
    // The message only: a logged error object carries its cause and, for an HTTP client error, the request.
    log.warn({ err: (err as Error).message, code: (err as AppError).code, status: (err as AppError).status }, 'voice could not be transcribed');
    return undefined;
  }
}

/** Worth another try: a retryable AppError, or got's network, timeout and HTTP errors (WeChat's 5xx). */
function isTransient(err: unknown): boolean {
  if (err instanceof AppError) return err.retryable;
  return err instanceof RequestError;
}
