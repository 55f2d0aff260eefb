import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { createLogger, createRedis, loadConfig, type AccountConfig, type RedisClient } from '../packages/core/src/index.js';
import { ffmpegPath, transcodeToMp3, TranscodeError } from '../apps/worker/src/ffmpeg.js';
import { collectAnswerFiles, sniffImage, uploadAnswerImages, WECHAT_IMAGE_MAX_BYTES } from '../apps/worker/src/media.js';
import { MediaLimitError, WeChatApi, WeChatApiError } from '../apps/worker/src/wechat-api.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { uniquePrefix } from './helpers/prefix.js';

const logger = createLogger({ level: 'silent' });
const AMR = readFileSync(new URL('./fixtures/voice-1s.amr', import.meta.url));
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=', 'base64');
const JPEG = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(64, 1)]);
const WEBP = Buffer.concat([Buffer.from('RIFF\x10\x00\x00\x00WEBPVP8 ', 'latin1'), Buffer.alloc(32)]);

/** Serves files by path, like Dify's /files/… (chunked when `chunked`, so no Content-Length). */
class FileServer {
  readonly files = new Map<string, { bytes: Buffer; type: string; chunked?: boolean }>();
  readonly hits: string[] = [];
  #server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    this.hits.push(path);
    const file = this.files.get(path);
    if (!file) return void res.writeHead(403).end('{"code":"forbidden","message":"Invalid request."}');
    if (file.chunked) {
      res.writeHead(200, { 'content-type': file.type });
      for (let i = 0; i < file.bytes.length; i += 1 << 20) res.write(file.bytes.subarray(i, i + (1 << 20)));
      return void res.end();
    }
    res.writeHead(200, { 'content-type': file.type, 'content-length': file.bytes.length }).end(file.bytes);
  });
  origin = '';
  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.origin = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this;
  }
  close(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

function account(wechatUrl: string): AccountConfig {
  const config = loadConfig({
    WECHAT_APP_ID: 'wxmedia', WECHAT_TOKEN: 'tok123', WECHAT_APP_SECRET: 'secret', WECHAT_API_BASE_URL: wechatUrl,
    DIFY_API_BASE_URL: 'http://127.0.0.1:9/v1', DIFY_API_KEY: 'app-x',
  });
  return config.accounts.get('default')!;
}

let wechat: FakeWeChat;
let redis: RedisClient;
let api: WeChatApi;

beforeAll(async () => {
  wechat = await new FakeWeChat().start();
  redis = createRedis(inject('redisUrl'));
  api = new WeChatApi({ account: account(wechat.url), redis, prefix: uniquePrefix(), logger });
});
afterAll(async () => {
  await wechat.close();
  redis.disconnect();
});

describe('WeChatApi media', () => {
  it('uploads a temporary image as multipart `media` and returns its media_id', async () => {
    const mediaId = await api.uploadTempMedia('image', PNG, 'answer.png', 'image/png');
    const upload = wechat.uploads.at(-1)!;
    expect(upload).toMatchObject({ mediaId, type: 'image', filename: 'answer.png', contentType: 'image/png', size: PNG.length });
    expect(upload.bytes.equals(PNG)).toBe(true);
    expect(wechat.calls.at(-1)).toMatchObject({ path: '/cgi-bin/media/upload', query: { type: 'image' } });
  });

  it('refreshes a rejected token once for an upload, as for JSON calls', async () => {
    wechat.invalidateTokens();
    const mediaId = await api.uploadTempMedia('image', PNG, 'again.png', 'image/png');
    expect(mediaId).toMatch(/^media_image_/);
  });

  it('refuses an image over 10 MB or not PNG/JPEG/GIF itself, without calling WeChat', async () => {
    const calls = wechat.calls.length;
    const tooBig = Buffer.concat([PNG, Buffer.alloc(WECHAT_IMAGE_MAX_BYTES)]);
    await expect(api.uploadTempMedia('image', tooBig, 'big.png', 'image/png')).rejects.toThrow(MediaLimitError);
    await expect(api.uploadTempMedia('image', PNG, 'pic.webp', 'image/webp')).rejects.toThrow(MediaLimitError);
    expect(wechat.calls.length).toBe(calls);
    // exactly at the limit is still sent
    const atLimit = Buffer.concat([PNG, Buffer.alloc(WECHAT_IMAGE_MAX_BYTES - PNG.length)]);
    expect(await api.uploadTempMedia('image', atLimit, 'limit.png', 'image/png')).toMatch(/^media_image_/);
  });

  it('surfaces WeChat\'s refusal of an upload as a WeChatApiError with the errcode', async () => {
    wechat.failNext('/cgi-bin/media/upload', 40009);
    const err = await api.uploadTempMedia('image', PNG, 'a.png', 'image/png').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeChatApiError);
    expect((err as WeChatApiError).errcode).toBe(40009);
  });

  it('gets 40007 for an image push naming a media_id WeChat never issued, and sends one it did', async () => {
    const err = await api.sendImage('oUserImg', 'never-issued').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeChatApiError);
    expect((err as WeChatApiError).errcode).toBe(40007);
    const mediaId = await api.uploadTempMedia('image', PNG, 'real.png', 'image/png');
    await api.sendImage('oUserImg', mediaId);
    expect(wechat.pushed.filter((m) => m.touser === 'oUserImg').map((m) => m.image?.media_id)).toEqual([mediaId]);
  });

  it('downloads a follower\'s voice by media id', async () => {
    wechat.addMedia('voice-media-1', AMR, 'audio/amr', 'voice.amr');
    const media = await api.downloadMedia('voice-media-1');
    expect(media.contentType).toBe('audio/amr');
    expect(media.bytes.equals(AMR)).toBe(true);
  });

  it('turns the errcode JSON WeChat sends for an unknown media id into errcode 40007, not bytes', async () => {
    const err = await api.downloadMedia('no-such-media').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeChatApiError);
    expect((err as WeChatApiError).errcode).toBe(40007);
  });

  it('refuses a download over its byte limit without keeping it', async () => {
    wechat.addMedia('big-media', Buffer.alloc(64 * 1024), 'audio/amr');
    await expect(api.downloadMedia('big-media', 1024)).rejects.toThrow(/over 1024 bytes/);
  });
});

describe('voice transcoding', () => {
  it('turns a real AMR-NB voice into MP3 with the ffmpeg from npm', async () => {
    expect(ffmpegPath()).toContain('@ffmpeg-installer');
    const mp3 = await transcodeToMp3(AMR);
    expect(mp3.subarray(0, 3).toString('latin1')).toBe('ID3');
    expect(hasMp3Frame(mp3)).toBe(true);
    expect(mp3.length).toBeGreaterThan(2_000);
  });

  it('lets ffmpeg open nothing but its pipe: a playlist naming a local file is refused', async () => {
    const playlist = Buffer.from('#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n');
    await expect(transcodeToMp3(playlist)).rejects.toBeInstanceOf(TranscodeError);
  });

  it('fails with TranscodeError on bytes that are no audio, and when ffmpeg is missing', async () => {
    await expect(transcodeToMp3(Buffer.from('{"errcode":40007}'))).rejects.toBeInstanceOf(TranscodeError);
    await expect(transcodeToMp3(AMR, { binary: '/nonexistent/ffmpeg' })).rejects.toThrow(/ffmpeg could not run: ENOENT/);
  });
});

describe('answer images', () => {
  let files: FileServer;
  beforeAll(async () => {
    files = await new FileServer().start();
    files.files.set('/files/tools/a.png', { bytes: PNG, type: 'image/png' });
    files.files.set('/files/tools/b.jpg', { bytes: JPEG, type: 'application/octet-stream' });
    files.files.set('/files/tools/c.webp', { bytes: WEBP, type: 'image/webp' });
    files.files.set('/files/tools/big.png', { bytes: Buffer.concat([PNG, Buffer.alloc(WECHAT_IMAGE_MAX_BYTES)]), type: 'image/png' });
    files.files.set('/files/tools/big-chunked.png', { bytes: Buffer.concat([PNG, Buffer.alloc(WECHAT_IMAGE_MAX_BYTES)]), type: 'image/png', chunked: true });
  });
  afterAll(() => files.close());
  afterEach(() => { files.hits.length = 0; });

  const opts = () => ({ difyOrigin: files.origin, log: logger });
  const image = (path: string) => ({ url: `${files.origin}${path}?timestamp=1&nonce=n&sign=s`, image: true });

  it('recognises PNG, JPEG and GIF by their bytes, whatever the server says', () => {
    expect(sniffImage(PNG)?.ext).toBe('png');
    expect(sniffImage(JPEG)?.ext).toBe('jpg');
    expect(sniffImage(Buffer.from('GIF89a....'))?.ext).toBe('gif');
    expect(sniffImage(WEBP)).toBeUndefined();
  });

  it('uploads each image in order and returns the media ids', async () => {
    const before = wechat.uploads.length;
    const result = await uploadAnswerImages(api, [image('/files/tools/a.png'), image('/files/tools/b.jpg')], opts());
    const uploads = wechat.uploads.slice(before);
    expect(result.links).toEqual([]);
    expect(result.mediaIds).toEqual(uploads.map((u) => u.mediaId));
    expect(uploads.map((u) => [u.filename, u.contentType])).toEqual([['answer.png', 'image/png'], ['answer.jpg', 'image/jpeg']]);
  });

  it('keeps as links the images over 10 MB (declared or counted) and formats WeChat does not take', async () => {
    const before = wechat.uploads.length;
    const list = [image('/files/tools/big.png'), image('/files/tools/big-chunked.png'), image('/files/tools/c.webp')];
    const result = await uploadAnswerImages(api, list, opts());
    expect(result.mediaIds).toEqual([]);
    expect(result.links).toEqual(list);
    expect(wechat.uploads.length).toBe(before);
  });

  it('links an image that an account enforcing the older 2 MB limit refuses with 40009', async () => {
    files.files.set('/files/tools/three-mb.png', { bytes: Buffer.concat([PNG, Buffer.alloc(3 * 1024 * 1024)]), type: 'image/png' });
    wechat.limits.image!.maxBytes = 2 * 1024 * 1024;
    try {
      const before = wechat.uploads.length;
      const result = await uploadAnswerImages(api, [image('/files/tools/three-mb.png'), image('/files/tools/a.png')], opts());
      expect(result.links).toEqual([image('/files/tools/three-mb.png')]);
      expect(result.mediaIds).toEqual(wechat.uploads.slice(before).map((u) => u.mediaId));
      expect(result.mediaIds).toHaveLength(1);
    } finally {
      wechat.limits.image!.maxBytes = WECHAT_IMAGE_MAX_BYTES;
    }
  });

  it('drops an image it cannot fetch (an expired signed URL) and links one WeChat refuses', async () => {
    wechat.failNext('/cgi-bin/media/upload', 40005);
    const result = await uploadAnswerImages(api, [image('/files/tools/expired.png'), image('/files/tools/a.png')], opts());
    expect(result).toEqual({ mediaIds: [], links: [image('/files/tools/a.png')] });
  });

  it('sends links, fetching nothing, without an AppSecret, for plain-http URLs off Dify, and past five images', async () => {
    const six = Array.from({ length: 6 }, () => image('/files/tools/a.png'));
    const none = await uploadAnswerImages(undefined, [image('/files/tools/a.png')], opts());
    expect(none).toEqual({ mediaIds: [], links: [image('/files/tools/a.png')] });
    const offDify = await uploadAnswerImages(api, [image('/files/tools/a.png')], { difyOrigin: 'http://dify.internal', log: logger });
    expect(offDify.links).toHaveLength(1);
    expect(files.hits).toEqual([]);
    const many = await uploadAnswerImages(api, six, opts());
    expect([many.mediaIds.length, many.links.length]).toEqual([5, 1]);
  });

  it('collects Dify files and markdown images once per URL path, skipping non-web URLs', () => {
    const collected = collectAnswerFiles(
      [
        { url: `${files.origin}/files/tools/a.png?sign=1`, type: 'image', from: 'message_file' },
        { url: `${files.origin}/files/tools/report.pdf?sign=1`, type: 'document', filename: 'report.pdf', from: 'workflow_output' },
      ],
      [`${files.origin}/files/tools/a.png?sign=2`, `${files.origin}/files/tools/b.jpg?sign=2`, 'data:image/png;base64,AAAA'],
    );
    expect(collected.map((f) => [new URL(f.url).pathname, f.image])).toEqual([
      ['/files/tools/a.png', true],
      ['/files/tools/report.pdf', false],
      ['/files/tools/b.jpg', true],
    ]);
  });
});

/** An MPEG audio frame header (11 sync bits) right after the ID3v2 tag. */
function hasMp3Frame(mp3: Buffer): boolean {
  const tagSize = ((mp3[6]! & 0x7f) << 21) | ((mp3[7]! & 0x7f) << 14) | ((mp3[8]! & 0x7f) << 7) | (mp3[9]! & 0x7f);
  const at = 10 + tagSize;
  return mp3[at] === 0xff && (mp3[at + 1]! & 0xe0) === 0xe0;
}
