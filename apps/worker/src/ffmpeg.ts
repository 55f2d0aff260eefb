import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { AppError } from '@wxdify/core';

/** ffmpeg could not run or could not read the input; the follower is told voice is unavailable. */
export class TranscodeError extends AppError {
  override readonly name = 'TranscodeError';
  constructor(message: string, cause?: unknown) {
    super('internal', message, { cause });
  }
}

/** WeChat voice lasts at most 60 s; a little more is kept so nothing is cut. */
const MAX_SECONDS = 70;
const TIMEOUT_MS = 20_000;
/** Dify takes at most 30 MB of audio; 70 s of 32 kbit/s MP3 is about 280 KB. */
const MAX_OUTPUT_BYTES = 30 * 1024 * 1024;
const STDERR_KEEP = 2_000;
/** AMR-NB storage format magic (RFC 4867 §5). */
const AMR_MAGIC = Buffer.from('#!AMR\n', 'latin1');

let cachedPath: string | undefined;

/**
 * The ffmpeg to run: the static build shipped by `@ffmpeg-installer/ffmpeg` (an npm package, so
 * it installs with `npm ci` and needs no network at run time), else `ffmpeg` from PATH. Resolved
 * on first use: the installer throws on platforms it has no build for.
 */
export function ffmpegPath(): string {
  if (cachedPath !== undefined) return cachedPath;
  try {
    const installer = createRequire(import.meta.url)('@ffmpeg-installer/ffmpeg') as { path: string };
    cachedPath = installer.path;
  } catch {
    cachedPath = 'ffmpeg';
  }
  return cachedPath;
}

/**
 * Transcodes audio ffmpeg can read (a WeChat voice is AMR-NB, 8 kHz) to mono 16 kHz MP3, the
 * format Dify's speech-to-text models take. Pipes only: nothing is written to disk, so it runs on
 * a read-only root filesystem.
 */
export function transcodeToMp3(input: Uint8Array, opts: { signal?: AbortSignal; binary?: string } = {}): Promise<Buffer> {
  // Only the pipe may be opened: a playlist-like input must not make ffmpeg read files or URLs.
  const format = isAmr(input) ? ['-f', 'amr'] : [];
  const args = ['-hide_banner', '-loglevel', 'error', '-protocol_whitelist', 'pipe', ...format, '-i', 'pipe:0',
    '-t', String(MAX_SECONDS), '-vn', '-ac', '1', '-ar', '16000', '-c:a', 'libmp3lame', '-b:a', '32k', '-f', 'mp3', 'pipe:1'];
  return new Promise((resolve, reject) => {
    const child = spawn(opts.binary ?? ffmpegPath(), args, { stdio: ['pipe', 'pipe', 'pipe'], signal: opts.signal, timeout: TIMEOUT_MS, killSignal: 'SIGKILL' });
    const out: Buffer[] = [];
    let size = 0;
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_OUTPUT_BYTES) child.kill('SIGKILL');
      else out.push(chunk);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      if (stderr.length < STDERR_KEEP) stderr += chunk.toString('utf8');
    });
    // ffmpeg may stop reading (bad input) before stdin is drained: that EPIPE is not the failure to report.
    child.stdin.on('error', () => undefined);
    child.once('error', (err) => reject(new TranscodeError(`ffmpeg could not run: ${(err as NodeJS.ErrnoException).code ?? err.message}`, err)));
    child.once('close', (code, signal) => {
      if (code === 0 && size > 0 && size <= MAX_OUTPUT_BYTES) return resolve(Buffer.concat(out));
      reject(new TranscodeError(`ffmpeg failed (${signal ?? `exit ${code}`}, ${size} bytes out): ${stderr.trim().slice(0, 300)}`));
    });
    child.stdin.end(input);
  });
}

function isAmr(input: Uint8Array): boolean {
  return Buffer.from(input.buffer, input.byteOffset, Math.min(input.byteLength, AMR_MAGIC.length)).equals(AMR_MAGIC);
}
