import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MESSAGES } from '../packages/core/src/index.js';
import { startFakeDify, type FakeDify, type RecordedRequest } from './fakes/fake-dify.js';
import { FakeWeChat } from './fakes/fake-wechat.js';
import { startStack, testEnv, type Stack } from './helpers/stack.js';
import { eventually, nextMsgId } from './helpers/wechat-timing.js';

// Issue 4 end to end: signed WeChat callbacks into the ingress, the answer job on real Redis and
// BullMQ, the worker against the fake Dify and the fake WeChat API, and the reply or pushes back.

const AMR = readFileSync(new URL('./fixtures/voice-1s.amr', import.meta.url));
const PNG_1X1 = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=', 'base64');

type RunBody = { query: string; user: string; inputs: Record<string, string>; files?: unknown[]; conversation_id?: string };
const bodyOf = (r: RecordedRequest) => r.body as RunBody;

interface World {
  dify: FakeDify;
  wechat: FakeWeChat;
  stack: Stack;
}

async function startWorld(fake: Parameters<typeof startFakeDify>[0], overrides: Record<string, string>, opts: { workerPort?: number } = {}): Promise<World> {
  const dify = await startFakeDify({ pingIntervalMs: 200, ...fake });
  const wechat = await new FakeWeChat().start();
  const stack = await startStack(testEnv({ dify, wechatUrl: wechat.url, overrides: { ENABLE_CUSTOM_MESSAGE: 'true', ...overrides } }), opts);
  return { dify, wechat, stack };
}

async function stopWorld(w: World | undefined): Promise<void> {
  if (!w) return;
  await w.stack.close();
  await Promise.all([w.dify.close(), w.wechat.close()]);
}

/** One WeChat attempt of a message (MsgId added) or an event from `openId`. */
function send(w: World, openId: string, fields: Record<string, string>) {
  const sim = w.stack.simulator('plain');
  const all = fields.MsgType === 'event' ? fields : { MsgId: nextMsgId(), ...fields };
  return sim.attempt(sim.messageXml(openId, all));
}

const runsOf = (w: World, openId: string) => w.dify.runRequests().filter((r) => bodyOf(r).user === openId).map(bodyOf);
const imagesPushedTo = (w: World, openId: string) => w.wechat.pushed.filter((m) => m.touser === openId && m.msgtype === 'image').map((m) => m.image!.media_id);

describe('a chat app with vision and speech-to-text (en_US, customer-service pushes)', () => {
  let w: World;
  const en = MESSAGES.en_US;

  beforeAll(async () => {
    w = await startWorld({ mode: 'chat', acceptsImages: true, speechToText: true, transcript: 'what is the weather' }, { LANGUAGE: 'en_US' });
  });
  afterAll(() => stopWorld(w));

  it('sends a follower image to Dify as a remote_url image file, with inputs.picUrl as before', async () => {
    const res = await send(w, 'o_pic', { MsgType: 'image', PicUrl: 'http://mmbiz.qpic.cn/pic.jpg', MediaId: 'img1' });
    expect(res.reply?.Content).toContain('http://mmbiz.qpic.cn/pic.jpg');
    const [run] = runsOf(w, 'o_pic');
    expect(run!.files).toEqual([{ type: 'image', transfer_method: 'remote_url', url: 'http://mmbiz.qpic.cn/pic.jpg' }]);
    expect(run!.inputs).toMatchObject({ msgType: 'image', picUrl: 'http://mmbiz.qpic.cn/pic.jpg', mediaId: 'img1' });
  });

  it('takes WeChat\'s Recognition as the query of a voice message, downloading nothing', async () => {
    const before = w.wechat.calls.length;
    const res = await send(w, 'o_recog', { MsgType: 'voice', MediaId: 'v0', Format: 'amr', Recognition: '明天天气怎么样' });
    expect(res.reply?.Content).toBe('Echo: 明天天气怎么样');
    expect(runsOf(w, 'o_recog')[0]!.inputs).toMatchObject({ msgType: 'voice', format: 'amr', recognition: '明天天气怎么样' });
    expect(w.wechat.calls.slice(before).some((c) => c.path === '/cgi-bin/media/get')).toBe(false);
  });

  it('transcribes a voice without Recognition: AMR from media/get, MP3 to Dify audio-to-text, the transcript as query', async () => {
    w.wechat.addMedia('voice-amr-1', AMR, 'audio/amr', 'voice-amr-1.amr');
    const res = await send(w, 'o_voice', { MsgType: 'voice', MediaId: 'voice-amr-1', Format: 'amr' });
    expect(res.reply?.Content).toBe('Echo: what is the weather');
    const upload = w.dify.audioUploads.find((u) => u.user === 'o_voice')!;
    expect(upload).toMatchObject({ contentType: 'audio/mp3', filename: 'voice.mp3' });
    expect(upload.bytes.subarray(0, 3).toString('latin1')).toBe('ID3');
    expect(runsOf(w, 'o_voice')[0]).toMatchObject({ query: 'what is the weather', inputs: { recognition: 'what is the weather', mediaId: 'voice-amr-1' } });
  });

  it('tells the follower voice is unavailable when WeChat no longer has the voice (40007), without asking Dify', async () => {
    const res = await send(w, 'o_voice_gone', { MsgType: 'voice', MediaId: 'expired-voice', Format: 'amr' });
    expect(res.reply?.Content).toBe(en.voiceUnavailable);
    expect(runsOf(w, 'o_voice_gone')).toEqual([]);
  });

  it('answers a Speex voice without Recognition that no transcoder can read with the localized voice message, without asking Dify', async () => {
    // Speex frames in WeChat's own framing (a length byte before each frame), not a container ffmpeg knows.
    const speex = Buffer.concat(Array.from({ length: 20 }, (_, i) => Buffer.from([42, ...Array.from({ length: 42 }, (_, j) => (i * 7 + j) & 0xff)])));
    w.wechat.addMedia('voice-speex-1', speex, 'audio/speex', 'voice-speex-1.speex');
    const res = await send(w, 'o_voice_speex', { MsgType: 'voice', MediaId: 'voice-speex-1', Format: 'speex' });
    expect(res.reply?.Content).toBe(en.voiceUnavailable);
    expect(runsOf(w, 'o_voice_speex')).toEqual([]);
    expect(w.dify.audioUploads.some((u) => u.user === 'o_voice_speex')).toBe(false);
  });

  it('sends link, location, video and shortvideo as readable text with their fields in inputs', async () => {
    const o = 'o_types';
    await send(w, o, { MsgType: 'link', Title: 'Dify docs', Description: 'The API', Url: 'https://docs.dify.ai' });
    await send(w, o, { MsgType: 'location', Location_X: '23.134521', Location_Y: '113.358803', Scale: '20', Label: 'Canton Tower' });
    await send(w, o, { MsgType: 'video', MediaId: 'vid1', ThumbMediaId: 'th1' });
    await send(w, o, { MsgType: 'shortvideo', MediaId: 'vid2', ThumbMediaId: 'th2' });
    const runs = runsOf(w, o);
    expect(runs.map((r) => r.query)).toEqual([
      '(The user shared a link: Dify docs\nThe API\nhttps://docs.dify.ai)',
      '(The user shared a location: Canton Tower, latitude 23.134521, longitude 113.358803)',
      en.videoNote,
      en.videoNote,
    ]);
    expect(runs[0]!.inputs).toMatchObject({ title: 'Dify docs', description: 'The API', url: 'https://docs.dify.ai' });
    expect(runs[1]!.inputs).toMatchObject({ label: 'Canton Tower', locationX: '23.134521', locationY: '113.358803', scale: '20' });
    expect(runs[2]!.inputs).toMatchObject({ msgType: 'video', mediaId: 'vid1', thumbMediaId: 'th1' });
    expect(runs[3]!.inputs).toMatchObject({ msgType: 'shortvideo', mediaId: 'vid2', thumbMediaId: 'th2' });
  });

  it('asks Dify on follow and scan (with the QR scene), forwards a menu CLICK key, and acknowledges the rest', async () => {
    const o = 'o_events';
    const event = (Event: string, EventKey?: string) => send(w, o, { MsgType: 'event', Event, ...(EventKey ? { EventKey } : {}) });
    expect((await event('subscribe', 'qrscene_promo42')).reply?.Content).toBe('Echo: subscribe promo42');
    expect((await event('SCAN', 'promo43')).reply?.Content).toBe('Echo: SCAN promo43');
    expect((await event('CLICK', 'MENU_PRICES')).reply?.Content).toBe('Echo: MENU_PRICES');
    expect((await event('CLICK', 'CLEAR_CONTEXT')).reply?.Content).toBe(en.cleared);
    const acks = await Promise.all([event('unsubscribe'), event('VIEW', 'https://example.com'), event('LOCATION')]);
    expect(acks.map((a) => a.body)).toEqual(['success', 'success', 'success']);
    const runs = runsOf(w, o);
    expect(runs.map((r) => r.query)).toEqual(['subscribe promo42', 'SCAN promo43', 'MENU_PRICES']);
    expect(runs[0]!.inputs).toMatchObject({ event: 'subscribe', eventKey: 'qrscene_promo42', scene: 'promo42' });
  });

  it.each(['message_file', 'message_file_relative', 'markdown_image'])(
    'replies the text and pushes the answer image of a %s as an uploaded temporary image',
    async (scenario) => {
      const o = `o_img_${scenario}`;
      const before = w.wechat.uploads.length;
      const res = await send(w, o, { MsgType: 'text', Content: `[[scenario:${scenario}]] draw a cat` });
      expect(res.reply).toMatchObject({ MsgType: 'text' });
      expect(res.reply!.Content).toContain('Echo: draw a cat');
      expect(res.reply!.Content).not.toContain('/files/tools/');
      const [pushed] = await eventually(() => (imagesPushedTo(w, o).length > 0 ? imagesPushedTo(w, o) : undefined));
      const uploads = w.wechat.uploads.slice(before);
      expect(uploads).toHaveLength(1);
      expect(uploads[0]).toMatchObject({ mediaId: pushed, type: 'image', contentType: 'image/png', filename: 'answer.png' });
      expect(uploads[0]!.bytes.equals(PNG_1X1)).toBe(true);
    },
  );

  it('replies with the image itself when an image is the whole answer', async () => {
    const url = w.dify.serveFile('png');
    w.dify.script(async (s) => {
      await s.emit('message_file', { id: randomUUID(), type: 'image', belongs_to: 'assistant', url });
      await s.emit('message_end', { id: s.messageId, metadata: {}, files: null });
    });
    const res = await send(w, 'o_img_only', { MsgType: 'text', Content: 'just the picture' });
    expect(res.reply).toMatchObject({ MsgType: 'image', MediaId: w.wechat.uploads.at(-1)!.mediaId });
  });

  it('fetches a message_file image as soon as its event arrives, so it outlives a signature that expires before the stream ends', async () => {
    const o = 'o_img_early';
    const before = w.wechat.uploads.length;
    w.dify.configure({ filesTtlMs: 300 });
    const url = w.dify.serveFile('png');
    w.dify.configure({ filesTtlMs: 300_000 });
    w.dify.script(async (s) => {
      await s.emit('message_file', { id: randomUUID(), type: 'image', belongs_to: 'assistant', url });
      await s.sleep(800);
      await s.emit('message', { id: s.messageId, answer: 'A cat, drawn slowly.' });
      await s.emit('message_end', { id: s.messageId, metadata: {}, files: null });
    });
    const res = await send(w, o, { MsgType: 'text', Content: 'draw a cat slowly' });
    expect(res.reply?.Content).toBe('A cat, drawn slowly.');
    const [pushed] = await eventually(() => (imagesPushedTo(w, o).length > 0 ? imagesPushedTo(w, o) : undefined));
    expect(w.wechat.uploads.slice(before).map((u) => u.mediaId)).toEqual([pushed]);
    expect(w.wechat.uploads.at(-1)!.bytes.equals(PNG_1X1)).toBe(true);
    expect((await fetch(`${w.dify.origin}${url}`)).status).toBe(403);
  });

  it('drops an answer image whose signed URL expired before it could be fetched, keeping the text', async () => {
    w.dify.configure({ filesTtlMs: 0 });
    const before = w.wechat.uploads.length;
    const res = await send(w, 'o_img_expired', { MsgType: 'text', Content: '[[scenario:markdown_image]] late cat' });
    w.dify.configure({ filesTtlMs: 300_000 });
    expect(res.reply?.Content).toBe('Echo: late cat');
    expect(w.wechat.uploads.length).toBe(before);
  });

  it('links an answer image WeChat refuses to take, instead of losing it', async () => {
    w.wechat.failNext('/cgi-bin/media/upload', 40005);
    const res = await send(w, 'o_img_refused', { MsgType: 'text', Content: '[[scenario:markdown_image]] refused cat' });
    expect(res.reply?.Content).toMatch(new RegExp(`^Echo: refused cat\\n\\n<a href="${w.dify.origin}/files/tools/[^"]+\\.png\\?[^"]+">${en.imageLink}</a>$`));
  });

  it.each(['think', 'think_details'])('gives the follower only the answer of a reasoning model (%s), never its reasoning', async (scenario) => {
    const o = `o_${scenario}`;
    const res = await send(w, o, { MsgType: 'text', Content: `[[scenario:${scenario}]] hello` });
    expect(res.reply?.Content).toBe('Echo: hello');
    expect(w.dify.runRequests().filter((r) => bodyOf(r).user === o).map((r) => r.scenario)).toEqual([scenario]);
  });

  it('turns a Markdown answer into WeChat text: headings and emphasis dropped, lists kept, links as <a href>', async () => {
    w.dify.enqueue({ name: 'normal', answer: '## Weather\n\n**Sunny** and _warm_.\n\n- bring water\n- wear a hat\n\nSee [the forecast](https://example.com/f?d=1).' });
    const res = await send(w, 'o_markdown', { MsgType: 'text', Content: 'weather?' });
    expect(res.reply?.Content).toBe('Weather\n\nSunny and warm.\n\n- bring water\n- wear a hat\n\nSee <a href="https://example.com/f?d=1">the forecast</a>.');
  });

  it('answers Dify errors with a short apology: the follower never sees Dify\'s code, message or partial text', async () => {
    const inStream = await send(w, 'o_err_a', { MsgType: 'text', Content: '[[scenario:llm_error]] hello there' });
    const overHttp = await send(w, 'o_err_b', { MsgType: 'text', Content: '[[scenario:provider_error]] hi' });
    expect([inStream.reply?.Content, overHttp.reply?.Content]).toEqual([en.difyError, en.difyError]);
    const seen = [inStream.reply?.Content, overHttp.reply?.Content, ...w.wechat.textsTo('o_err_a'), ...w.wechat.textsTo('o_err_b')].join('\n');
    for (const leak of ['openai', 'Rate limit', 'completion_request_error', 'provider', 'credentials', 'Echo']) {
      expect(seen).not.toContain(leak);
    }
  });
});

describe('a workflow app without vision or speech-to-text (ja_JP)', () => {
  let w: World;
  const ja = MESSAGES.ja_JP;

  beforeAll(async () => {
    w = await startWorld({ mode: 'workflow', acceptsImages: false, speechToText: false }, { DIFY_APP_TYPE: 'auto', LANGUAGE: 'ja_JP' });
  });
  afterAll(() => stopWorld(w));

  it('sends a follower image as text only when the app takes no images', async () => {
    await send(w, 'o_wf_pic', { MsgType: 'image', PicUrl: 'http://mmbiz.qpic.cn/p.jpg', MediaId: 'm1' });
    const [run] = runsOf(w, 'o_wf_pic');
    expect(run!.files).toBeUndefined();
    expect(run!.inputs).toMatchObject({ picUrl: 'http://mmbiz.qpic.cn/p.jpg', query: ja.imageNote.replace('{url}', 'http://mmbiz.qpic.cn/p.jpg') });
  });

  it('uploads the image file a workflow returns in its outputs and pushes it after the text', async () => {
    const res = await send(w, 'o_wf_file', { MsgType: 'text', Content: '[[scenario:message_file]] a chart' });
    expect(res.reply?.Content).toBe('Echo: a chart');
    const [mediaId] = await eventually(() => (imagesPushedTo(w, 'o_wf_file').length > 0 ? imagesPushedTo(w, 'o_wf_file') : undefined));
    expect(w.wechat.uploads.map((u) => u.mediaId)).toContain(mediaId);
  });

  it('tells the follower in their language that voice is unavailable when Dify has speech-to-text off', async () => {
    w.wechat.addMedia('voice-amr-2', AMR, 'audio/amr');
    const res = await send(w, 'o_wf_voice', { MsgType: 'voice', MediaId: 'voice-amr-2', Format: 'amr' });
    expect(res.reply?.Content).toBe(ja.voiceUnavailable);
    expect(w.dify.requests.some((r) => r.path === '/v1/audio-to-text' && r.status === 400)).toBe(true);
    expect(runsOf(w, 'o_wf_voice')).toEqual([]);
  });

  it('answers SCAN with WELCOME_MESSAGE when one is set, without asking Dify', async () => {
    await stopWorld(w);
    w = await startWorld({ mode: 'workflow' }, { DIFY_APP_TYPE: 'workflow', LANGUAGE: 'ja_JP', WELCOME_MESSAGE: 'ようこそ！' });
    const scan = await send(w, 'o_wf_scan', { MsgType: 'event', Event: 'SCAN', EventKey: 'promo7' });
    const follow = await send(w, 'o_wf_scan', { MsgType: 'event', Event: 'subscribe', EventKey: 'qrscene_promo7' });
    expect([scan.reply?.Content, follow.reply?.Content]).toEqual(['ようこそ！', 'ようこそ！']);
    expect(runsOf(w, 'o_wf_scan')).toEqual([]);
  });
});

describe('an account without WECHAT_APP_SECRET (pt_BR)', () => {
  let w: World;
  const pt = MESSAGES.pt_BR;

  beforeAll(async () => {
    w = await startWorld({ mode: 'chat', speechToText: true }, { WECHAT_APP_SECRET: '', ENABLE_CUSTOM_MESSAGE: 'false', LANGUAGE: 'pt_BR' });
  });
  afterAll(() => stopWorld(w));

  it('keeps answer images as links in the text, since nothing can be uploaded', async () => {
    const res = await send(w, 'o_nosecret_img', { MsgType: 'text', Content: '[[scenario:markdown_image]] gato' });
    expect(res.reply?.Content).toMatch(new RegExp(`^Echo: gato\\n\\n<a href="${w.dify.origin}/files/tools/[^"]+">${pt.imageLink}</a>$`));
    expect(w.wechat.calls).toEqual([]);
  });

  it('cannot download a voice without Recognition and says so in the follower\'s language', async () => {
    const res = await send(w, 'o_nosecret_voice', { MsgType: 'voice', MediaId: 'v9', Format: 'amr' });
    expect(res.reply?.Content).toBe(pt.voiceUnavailable);
    expect(w.dify.audioUploads).toEqual([]);
  });
});

describe('a slow chat app that takes images only as uploads (zh_Hans, 400 ms idle timeout)', () => {
  let w: World;
  const zh = MESSAGES.zh_Hans;

  beforeAll(async () => {
    w = await startWorld(
      { mode: 'chat', acceptsImages: true, imageTransferMethods: ['local_file'] },
      { LANGUAGE: 'zh_Hans', DIFY_IDLE_TIMEOUT_MS: '400' },
      { workerPort: 0 },
    );
  });
  afterAll(() => stopWorld(w));

  it('sends a follower image as text when the app does not allow remote_url files', async () => {
    const res = await send(w, 'o_local_only', { MsgType: 'image', PicUrl: 'http://mmbiz.qpic.cn/l.jpg', MediaId: 'm2' });
    expect(res.reply?.Content).toBe(`Echo: ${zh.imageNote.replace('{url}', 'http://mmbiz.qpic.cn/l.jpg')}`);
    expect(runsOf(w, 'o_local_only')[0]!.files).toBeUndefined();
  });

  it('tells the follower Dify took too long when the stream sends nothing but pings', async () => {
    const res = await send(w, 'o_hang', { MsgType: 'text', Content: '[[scenario:hang+hang=5000]] are you there?' });
    expect(res.reply?.Content).toBe(zh.difyTimeout);
    expect(runsOf(w, 'o_hang')).toHaveLength(1);
    await eventually(() => (w.dify.runRequests().find((r) => bodyOf(r).user === 'o_hang')?.clientClosed ? true : undefined));
  });

  it('keeps the follower\'s conversation through an answer too slow to wait for, and says it timed out', async () => {
    const o = 'o_slow_conv';
    expect((await send(w, o, { MsgType: 'text', Content: 'first' })).reply?.Content).toBe('Echo: first');
    expect((await send(w, o, { MsgType: 'text', Content: '[[scenario:slow+delay=1500]] second' })).reply?.Content).toBe(zh.difyTimeout);
    expect((await send(w, o, { MsgType: 'text', Content: 'third' })).reply?.Content).toBe('Echo: third');
    const conversation = w.dify.conversationIds(o);
    expect(conversation).toHaveLength(1);
    expect(runsOf(w, o).map((r) => r.conversation_id)).toEqual([undefined, conversation[0], conversation[0]]);
  });

  it('counts every failed Dify try in wxdify_dify_errors_total, the retried ones too', async () => {
    const metricsUrl = `${w.stack.workers[0]!.url}/metrics`;
    const difyHttpErrors = async () => Number(/^wxdify_dify_errors_total\{[^}]*code="dify_http"[^}]*\} (\d+)$/m.exec(await (await fetch(metricsUrl)).text())?.[1] ?? 0);
    const before = await difyHttpErrors();
    w.dify.enqueue('http_429', 'http_500');
    expect((await send(w, 'o_retried', { MsgType: 'text', Content: 'after two failures' })).reply?.Content).toBe('Echo: after two failures');
    expect(await difyHttpErrors()).toBe(before + 2);
    expect((await send(w, 'o_refused', { MsgType: 'text', Content: '[[scenario:provider_error]] hi' })).reply?.Content).toBe(zh.difyError);
    expect(await difyHttpErrors()).toBe(before + 3);
  });
});
