import { request, type IncomingMessage } from 'node:http';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sha1Signature } from '../packages/core/src/index.js';
import { startFakeDify, type FakeDify } from './fakes/fake-dify.js';
import { AES_KEY, APP_ID, startStack, testEnv, TOKEN, type Stack } from './helpers/stack.js';
import { WXBizMsgCrypt } from './helpers/wechat-reference.js';
import { twoModesConfigFile } from './helpers/wechat-timing.js';

let msgSeq = 7_000_000_000_000_000_000n;
const nextMsgId = () => String(msgSeq++);

/** One element's text, CDATA or not, read without the project's XML parser. */
const field = (xml: string, name: string) => xml.match(new RegExp(`<${name}>(?:<!\\[CDATA\\[)?(.*?)(?:\\]\\]>)?</${name}>`, 's'))?.[1];

/** Checks an encrypted reply's MsgSignature and opens it with node-webot's wechat-crypto; the AppID inside must be ours. */
function openWithReference(body: string): string {
  const reference = new WXBizMsgCrypt(TOKEN, AES_KEY, APP_ID);
  const sealed = field(body, 'Encrypt')!;
  expect(reference.getSignature(field(body, 'TimeStamp')!, field(body, 'Nonce')!, sealed)).toBe(field(body, 'MsgSignature'));
  const opened = reference.decrypt(sealed);
  expect(opened.id).toBe(APP_ID);
  return opened.message;
}

describe('a follower message through ingress, queue, worker and Dify', () => {
  let dify: FakeDify;
  let stack: Stack;
  let redis: Redis;

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', answer: (q) => `Echo: ${q}` });
    stack = await startStack(testEnv({ dify }));
    redis = new Redis(inject('redisUrl'));
  });
  afterAll(async () => {
    await stack.close();
    await dify.close();
    await redis.quit();
  });

  it.each(['plain', 'compatible', 'safe'] as const)('answers a text message passively on the first attempt in %s mode', async (mode) => {
    const sim = stack.simulator(mode);
    const openId = `o_user_${mode}`;
    const result = await sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: `hello ${mode}`, MsgId: nextMsgId() }));
    expect(result.status).toBe(200);
    // Encrypted replies are opened by an independent implementation, not by the project's own Encryptor.
    const reply = mode === 'plain' ? result.body : openWithReference(result.body);
    expect([field(reply, 'ToUserName'), field(reply, 'FromUserName'), field(reply, 'MsgType'), field(reply, 'Content')]).toEqual([openId, 'gh_simulator', 'text', `Echo: hello ${mode}`]);
    if (mode === 'plain') expect(result.body).toContain('<Content><![CDATA[Echo: hello plain]]></Content>');
    else expect(result.body).toMatch(/^<xml><Encrypt>.*<MsgSignature>.*<TimeStamp>.*<Nonce>/s);
    expect(result.ms).toBeLessThan(2000);
  });

  it.each(['compatible', 'safe'] as const)('answers a request sealed by an independent implementation with a reply it opens, in %s mode', async (mode) => {
    // node-webot's wechat-crypto seals the request and opens the reply: the project's own Encryptor is on neither side.
    const reference = new WXBizMsgCrypt(TOKEN, AES_KEY, APP_ID);
    const openId = `o_reference_${mode}`;
    const inner = `<xml><ToUserName><![CDATA[gh_reference]]></ToUserName><FromUserName><![CDATA[${openId}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[sealed ${mode}]]></Content><MsgId>${nextMsgId()}</MsgId></xml>`;
    const encrypt = reference.encrypt(inner);
    const [timestamp, nonce] = [String(Math.floor(Date.now() / 1000)), '424242'];
    const query = new URLSearchParams({ signature: sha1Signature(TOKEN, timestamp, nonce), timestamp, nonce, encrypt_type: 'aes', msg_signature: reference.getSignature(timestamp, nonce, encrypt) });
    const plain = mode === 'compatible' ? inner.replace(/^<xml>|<\/xml>$/g, '') : '<ToUserName><![CDATA[gh_reference]]></ToUserName>';
    const res = await fetch(`${stack.ingress.url}/wechat?${query}`, { method: 'POST', body: `<xml>${plain}<Encrypt><![CDATA[${encrypt}]]></Encrypt></xml>` });
    expect(res.status).toBe(200);
    const reply = openWithReference(await res.text());
    expect([field(reply, 'ToUserName'), field(reply, 'FromUserName'), field(reply, 'Content')]).toEqual([openId, 'gh_reference', `Echo: sealed ${mode}`]);
  });

  it('sends Dify the OpenID as user and the seed plugin\'s inputs, and reuses the conversation', async () => {
    const sim = stack.simulator('safe');
    const openId = 'o_conversation_user';
    const first = nextMsgId();
    await sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: 'first', MsgId: first }, 1_700_000_000));
    await sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: 'second', MsgId: nextMsgId() }));
    const runs = dify.runRequests().filter((r) => (r.body as { user: string }).user === openId);
    expect(runs).toHaveLength(2);
    const [a, b] = runs.map((r) => r.body as { query: string; inputs: Record<string, string>; conversation_id?: string; response_mode: string });
    expect(a).toMatchObject({ query: 'first', response_mode: 'streaming' });
    expect(a!.inputs).toEqual({ msgId: first, msgType: 'text', fromUser: openId, createTime: '1700000000' });
    expect(a!.conversation_id ?? '').toBe('');
    const [conversationId] = dify.conversationIds(openId);
    expect(b!.conversation_id).toBe(conversationId);
    // Kept in Redis under QUEUE_PREFIX, so it survives restarts of every process.
    const stored = await redis.hget(`${stack.config.queuePrefix}:conv:default:${openId}`, 'id');
    expect(stored).toBe(conversationId);
  });

  it('sends other message types to Dify as useful text with their fields in inputs', async () => {
    const sim = stack.simulator('plain');
    const openId = 'o_types_user';
    const location = await sim.attempt(
      sim.messageXml(openId, { MsgType: 'location', Location_X: '23.134521', Location_Y: '113.358803', Scale: '20', Label: 'Canton Tower', MsgId: nextMsgId() }),
    );
    expect(location.reply?.Content).toContain('Canton Tower');
    const link = await sim.attempt(
      sim.messageXml(openId, { MsgType: 'link', Title: 'Dify docs', Description: 'API', Url: 'https://docs.dify.ai', MsgId: nextMsgId() }),
    );
    expect(link.reply?.Content).toContain('https://docs.dify.ai');
    const image = await sim.attempt(
      sim.messageXml(openId, { MsgType: 'image', PicUrl: 'http://mmbiz.example/pic.jpg', MediaId: 'media1', MsgId: nextMsgId() }),
    );
    expect(image.reply?.Content).toContain('http://mmbiz.example/pic.jpg');
    const runs = dify.runRequests().filter((r) => (r.body as { user: string }).user === openId).map((r) => r.body as { query: string; inputs: Record<string, string> });
    // The text Dify reads carries what the follower shared, not only the inputs.
    expect(runs[0]!.query).toEqual(expect.stringContaining('Canton Tower'));
    expect(runs[0]!.query).toEqual(expect.stringContaining('23.134521'));
    expect(runs[0]!.query).toEqual(expect.stringContaining('113.358803'));
    expect(runs[1]!.query).toEqual(expect.stringContaining('Dify docs'));
    expect(runs[1]!.query).toEqual(expect.stringContaining('https://docs.dify.ai'));
    expect(runs[2]!.query).toEqual(expect.stringContaining('http://mmbiz.example/pic.jpg'));
    const inputs = runs.map((r) => r.inputs);
    expect(inputs[0]).toMatchObject({ msgType: 'location', label: 'Canton Tower', locationX: '23.134521' });
    expect(inputs[1]).toMatchObject({ msgType: 'link', title: 'Dify docs', url: 'https://docs.dify.ai' });
    expect(inputs[2]).toMatchObject({ msgType: 'image', picUrl: 'http://mmbiz.example/pic.jpg' });
  });

  it('answers subscribe through Dify and acknowledges unsubscribe and VIEW without it', async () => {
    const sim = stack.simulator('plain');
    const openId = 'o_events_user';
    const before = dify.runRequests().length;
    const sub = await sim.attempt(sim.messageXml(openId, { MsgType: 'event', Event: 'subscribe' }));
    expect(sub.reply?.Content).toMatch(/^Echo: /);
    const unsub = await sim.attempt(sim.messageXml(openId, { MsgType: 'event', Event: 'unsubscribe' }));
    const view = await sim.attempt(sim.messageXml(openId, { MsgType: 'event', Event: 'VIEW', EventKey: 'https://example.com' }));
    expect([unsub.body, view.body]).toEqual(['success', 'success']);
    expect(dify.runRequests().length - before).toBe(1);
  });

  it('attaches a retry of the same message to the existing job: one Dify call', async () => {
    const sim = stack.simulator('plain');
    const xml = sim.messageXml('o_retry_user', { MsgType: 'text', Content: 'only once', MsgId: nextMsgId() });
    const [a, b] = await Promise.all([sim.attempt(xml), sim.attempt(xml)]);
    expect(a.reply?.Content).toBe('Echo: only once');
    expect(b.reply?.Content).toBe('Echo: only once');
    expect(dify.runRequests().filter((r) => (r.body as { query: string }).query === 'only once')).toHaveLength(1);
  });

  it('answers the GET verification with echostr, and 403 with a wrong signature', async () => {
    const ts = '1700000000';
    const nonce = '12345';
    const good = await fetch(`${stack.ingress.url}/wechat?signature=${sha1Signature(TOKEN, ts, nonce)}&timestamp=${ts}&nonce=${nonce}&echostr=4242`);
    expect([good.status, await good.text()]).toEqual([200, '4242']);
    const bad = await fetch(`${stack.ingress.url}/wechat/default?signature=deadbeef&timestamp=${ts}&nonce=${nonce}&echostr=4242`);
    expect(bad.status).toBe(403);
  });

  it('refuses bad input with the contract\'s status codes, never reaching Dify', async () => {
    const sim = stack.simulator('plain');
    const before = dify.runRequests().length;
    const post = (url: string, body: string) => fetch(url, { method: 'POST', body, headers: { 'content-type': 'text/xml' } }).then((r) => r.status);
    const valid = sim.buildRequest(sim.messageXml('o_bad', { MsgType: 'text', Content: 'x', MsgId: nextMsgId() }));

    expect(await post(valid.url.replace(/signature=[0-9a-f]+/, 'signature=0000'), valid.body)).toBe(403);
    expect(await post(valid.url.replace('/wechat?', '/wechat/nope?'), valid.body)).toBe(404);
    const garbage = sim.buildRequest('<xml><ToUserName>');
    expect(await post(garbage.url, garbage.body)).toBe(400);
    const missing = sim.buildRequest('<xml><MsgType>text</MsgType></xml>');
    expect(await post(missing.url, missing.body)).toBe(400);
    const doctype = sim.buildRequest('<!DOCTYPE xml [<!ENTITY a "b">]><xml><ToUserName>&a;</ToUserName></xml>');
    expect(await post(doctype.url, doctype.body)).toBe(400);
    const huge = sim.buildRequest(`<xml><Content>${'x'.repeat(1024 * 1024 + 10)}</Content></xml>`);
    expect(await post(huge.url, huge.body)).toBe(413);
    const safe = stack.simulator('safe').buildRequest(sim.messageXml('o_bad', { MsgType: 'text', Content: 'x', MsgId: nextMsgId() }));
    expect(await post(safe.url.replace(/msg_signature=[0-9a-f]+/, 'msg_signature=00'), safe.body)).toBe(403);
    // A correctly signed envelope that does not decrypt (wrong key) is a 400.
    const garbled = 'A'.repeat(88);
    const ts = new URL(safe.url).searchParams.get('timestamp')!;
    const nonce = new URL(safe.url).searchParams.get('nonce')!;
    const garbledUrl = safe.url.replace(/msg_signature=[0-9a-f]+/, `msg_signature=${sha1Signature(TOKEN, ts, nonce, garbled)}`);
    expect(await post(garbledUrl, `<xml><ToUserName>gh</ToUserName><Encrypt>${garbled}</Encrypt></xml>`)).toBe(400);
    expect(dify.runRequests().length).toBe(before);
  });

  it('refuses a bad signature with 403 before reading the body, and closes the connection', async () => {
    const sim = stack.simulator('plain');
    const { url } = sim.buildRequest(sim.messageXml('o_big', { MsgType: 'text', Content: 'x', MsgId: nextMsgId() }));
    const forged = url.replace(/signature=[0-9a-f]+/, `signature=${'0'.repeat(40)}`);
    // Announces almost 1 MiB, sends 1 KiB and then nothing: only a server that refuses before reading answers at all.
    const req = request(forged, { method: 'POST', headers: { 'content-type': 'text/xml', 'content-length': String(1024 * 1024 - 1) } });
    const started = Date.now();
    const answered = new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
      setTimeout(() => reject(new Error('no answer while the body was incomplete')), 3000).unref();
    });
    req.write(`<xml>${'x'.repeat(1024)}`);
    try {
      const res = await answered;
      expect(res.statusCode).toBe(403);
      expect(res.headers.connection).toBe('close');
      expect(Date.now() - started).toBeLessThan(1000);
      res.resume();
    } finally {
      req.destroy();
    }
  });

  it('refuses a FromUserName that is not an OpenID with 400, before anything is written to Redis', async () => {
    const sim = stack.simulator('plain');
    const msgId = nextMsgId();
    const { url, body } = sim.buildRequest(sim.messageXml('a:b', { MsgType: 'text', Content: 'colon', MsgId: msgId }));
    const res = await fetch(url, { method: 'POST', body, headers: { 'content-type': 'text/xml' } });
    expect(res.status).toBe(400);
    const written = (await redis.keys(`${stack.config.queuePrefix}*`)).filter((k) => k.includes(msgId) || k.includes('a:b'));
    expect(written).toEqual([]);
  });

  it('serves /healthz and /readyz', async () => {
    expect((await fetch(`${stack.ingress.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${stack.ingress.url}/readyz`)).status).toBe(200);
  });
});

describe('the idempotency key: account + FromUserName + MsgId', () => {
  let dify: FakeDify;
  let stack: Stack;

  beforeAll(async () => {
    dify = await startFakeDify({ mode: 'chat', answer: (q) => `Echo: ${q}` });
    stack = await startStack(testEnv({ dify, overrides: { CONFIG_FILE: twoModesConfigFile(dify, 'http://127.0.0.1:9') } }));
  });
  afterAll(async () => {
    await stack.close();
    await dify.close();
  });

  it('gives two followers, and two accounts, sending the same MsgId a Dify call and an answer each', async () => {
    // A bare MsgId has collided across users in the wild (DESIGN.md, invariant 1).
    const msgId = nextMsgId();
    const senders = [['push', 'o_same_a'], ['push', 'o_same_b'], ['wait', 'o_same_a']] as const;
    const results = await Promise.all(
      senders.map(([account, openId]) => {
        const sim = stack.simulator('plain', account);
        return sim.attempt(sim.messageXml(openId, { MsgType: 'text', Content: `${account} ${openId}`, MsgId: msgId }));
      }),
    );
    expect(results.map((r) => [r.reply?.ToUserName, r.reply?.Content])).toEqual(senders.map(([account, openId]) => [openId, `Echo: ${account} ${openId}`]));
    const runs = dify.runRequests().filter((r) => (r.body as { inputs: { msgId: string } }).inputs.msgId === msgId);
    expect(runs.map((r) => (r.body as { query: string }).query).sort()).toEqual(senders.map(([account, openId]) => `${account} ${openId}`).sort());
  });
});
