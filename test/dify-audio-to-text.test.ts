import { afterEach, describe, expect, it } from 'vitest';
import { createDifyClient, type DifyClient } from '../packages/core/src/dify/index.js';
import { AppError } from '../packages/core/src/errors.js';
import { createLogger } from '../packages/core/src/logger.js';
import { startFakeDify, type FakeDify, type FakeDifyOptions } from './fakes/fake-dify.js';

const logger = createLogger({ level: 'silent' });
const MP3 = Buffer.concat([Buffer.from('ID3\x04\x00\x00\x00\x00\x00\x00', 'latin1'), Buffer.from([0xff, 0xfb, 0x50, 0xc4]), Buffer.alloc(400)]);
let fake: FakeDify | undefined;

afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

async function setup(opts: FakeDifyOptions): Promise<DifyClient> {
  fake = await startFakeDify(opts);
  return createDifyClient({ baseUrl: fake.baseUrl, apiKey: fake.apiKey, appType: 'chat', queryVariable: 'query', idleTimeoutMs: 1_000, totalTimeoutMs: 5_000, logger });
}

async function rejection(p: Promise<unknown>): Promise<AppError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(AppError);
  return err as AppError;
}

describe('DifyClient audioToText', () => {
  it('posts the file as multipart audio/mp3 with the same user and returns the transcript', async () => {
    const dify = await setup({ speechToText: true, transcript: (audio, type) => `${audio.length} bytes of ${type}` });
    expect(await dify.audioToText(MP3, 'oUser1')).toBe(`${MP3.length} bytes of audio/mp3`);
    expect(fake!.audioUploads[0]).toMatchObject({ user: 'oUser1', contentType: 'audio/mp3', filename: 'voice.mp3' });
    expect(fake!.audioUploads[0]!.bytes.equals(MP3)).toBe(true);
  });

  it('gets Dify\'s 415 for audio/mpeg, the type mime libraries give MP3', async () => {
    const dify = await setup({ speechToText: true });
    const err = await rejection(dify.audioToText(MP3, 'oUser1', { contentType: 'audio/mpeg' }));
    expect([err.code, err.status, err.retryable]).toEqual(['dify_http', 415, false]);
  });

  it('fails with status 400 (not retryable) when the app has speech-to-text off', async () => {
    const dify = await setup({ speechToText: false });
    const err = await rejection(dify.audioToText(MP3, 'oUser1'));
    expect([err.status, err.retryable]).toEqual([400, false]);
    expect((err.cause as { code?: string }).code).toBe('speech_to_text_disabled');
  });

  it('treats a network failure as retryable', async () => {
    const dify = await setup({ speechToText: true });
    await fake!.close();
    fake = undefined;
    const err = await rejection(dify.audioToText(MP3, 'oUser1'));
    expect(err.retryable).toBe(true);
  });
});
