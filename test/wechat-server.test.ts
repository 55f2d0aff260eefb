import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  buildTextReplyXml,
  decodeRequest,
  encodeReply,
  parseXml,
  verifyEcho,
  type WeChatAccountKeys,
} from '../packages/core/src/wechat/index.js';
import { SAMPLE, WXBizMsgCrypt } from './helpers/wechat-reference.js';
import { expectRejected } from './helpers/expect-rejected.js';


const { token: TOKEN, key: KEY, appId: APP_ID } = SAMPLE;
const plainAccount: WeChatAccountKeys = { appId: APP_ID, token: TOKEN };
const aesAccount: WeChatAccountKeys = { appId: APP_ID, token: TOKEN, encodingAesKey: KEY };
const wechat = new WXBizMsgCrypt(TOKEN, KEY, APP_ID);

const TIMESTAMP = '1409304348';
const NONCE = '1320562132';
const INNER =
  '<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>' +
  '<CreateTime>1409304348</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好 🙂]]></Content>' +
  '<MsgId>6054768590064713728</MsgId></xml>';

function sign(...parts: string[]): string {
  return createHash('sha1').update(parts.sort().join('')).digest('hex');
}

function signedQuery(extra: Record<string, string> = {}): Record<string, string> {
  return { signature: sign(TOKEN, TIMESTAMP, NONCE), timestamp: TIMESTAMP, nonce: NONCE, openid: 'oUser', ...extra };
}

/** What WeChat posts in safe mode: the envelope, with msg_signature over it in the query. */
function safeModeRequest(inner = INNER, sealer: WXBizMsgCrypt = wechat) {
  const encrypt = sealer.encrypt(inner);
  const body = `<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><Encrypt><![CDATA[${encrypt}]]></Encrypt></xml>`;
  const query = signedQuery({ encrypt_type: 'aes', msg_signature: sign(TOKEN, TIMESTAMP, NONCE, encrypt) });
  return { encrypt, body, query };
}


describe('verifyEcho', () => {
  it('returns echostr when the signature is right', () => {
    expect(verifyEcho(plainAccount, signedQuery({ echostr: '5837397520767245627' }))).toBe('5837397520767245627');
    expect(verifyEcho(aesAccount, signedQuery({ echostr: '5837397520767245627' }))).toBe('5837397520767245627');
  });

  it('answers 403 to a wrong or missing signature', () => {
    expectRejected(() => verifyEcho(plainAccount, { ...signedQuery({ echostr: 'e' }), signature: sign('x') }), 'bad_signature', 403);
    expectRejected(() => verifyEcho(plainAccount, { ...signedQuery({ echostr: 'e' }), signature: undefined }), 'bad_signature', 403);
    expectRejected(() => verifyEcho(plainAccount, { ...signedQuery({ echostr: 'e' }), timestamp: undefined }), 'bad_signature', 403);
    expectRejected(() => verifyEcho(plainAccount, { echostr: 'e' }), 'bad_signature', 403);
  });

  it('answers 400 when echostr is missing', () => {
    expectRejected(() => verifyEcho(plainAccount, signedQuery()), 'bad_request', 400);
  });

  it('decrypts an encrypted echostr signed with msg_signature', () => {
    const echostr = wechat.encrypt('4321098765');
    const query = signedQuery({ echostr, msg_signature: sign(TOKEN, TIMESTAMP, NONCE, echostr) });
    expect(verifyEcho(aesAccount, query)).toBe('4321098765');
  });

  it('answers 403 to an encrypted echostr with a wrong msg_signature', () => {
    const echostr = wechat.encrypt('4321098765');
    const query = signedQuery({ echostr, msg_signature: sign(TOKEN, TIMESTAMP, NONCE, 'other') });
    expectRejected(() => verifyEcho(aesAccount, query), 'bad_signature', 403);
  });

  it('answers 400 to an encrypted echostr sealed for another AppID', () => {
    const echostr = new WXBizMsgCrypt(TOKEN, KEY, 'wx0000000000000000').encrypt('4321098765');
    const query = signedQuery({ echostr, msg_signature: sign(TOKEN, TIMESTAMP, NONCE, echostr) });
    expectRejected(() => verifyEcho(aesAccount, query), 'decrypt_failed', 400);
  });

  it('returns echostr as is without an EncodingAESKey or when it is plainly not encrypted', () => {
    const echostr = wechat.encrypt('4321098765');
    const query = signedQuery({ echostr, msg_signature: sign(TOKEN, TIMESTAMP, NONCE, echostr) });
    expect(verifyEcho(plainAccount, query)).toBe(echostr);
    const plain = signedQuery({ echostr: '5837397520767245627', msg_signature: 'whatever' });
    expect(verifyEcho(aesAccount, plain)).toBe('5837397520767245627');
  });
});

describe('decodeRequest: plain mode', () => {
  it('parses a signed plaintext body', () => {
    const decoded = decodeRequest(plainAccount, signedQuery(), INNER);
    expect(decoded).toMatchObject({ encrypted: false, timestamp: TIMESTAMP, nonce: NONCE });
    expect(decoded.message).toMatchObject({ kind: 'text', content: '你好 🙂', msgId: '6054768590064713728' });
  });

  it('checks the signature in plain mode too', () => {
    expectRejected(() => decodeRequest(plainAccount, { timestamp: TIMESTAMP, nonce: NONCE }, INNER), 'bad_signature', 403);
    expectRejected(() => decodeRequest(plainAccount, { ...signedQuery(), signature: sign('x') }, INNER), 'bad_signature', 403);
    expectRejected(() => decodeRequest(plainAccount, { ...signedQuery(), nonce: '1' }, INNER), 'bad_signature', 403);
    expectRejected(() => decodeRequest(aesAccount, { ...signedQuery(), signature: undefined }, INNER), 'bad_signature', 403);
  });

  it('checks the signature before looking at the body', () => {
    expectRejected(() => decodeRequest(plainAccount, {}, '<!DOCTYPE x><xml/>'), 'bad_signature', 403);
    expectRejected(() => decodeRequest(plainAccount, {}, ''), 'bad_signature', 403);
  });

  it('answers 400 to an empty, malformed or hostile body', () => {
    expectRejected(() => decodeRequest(plainAccount, signedQuery(), ''), 'bad_request', 400);
    expectRejected(() => decodeRequest(plainAccount, signedQuery(), '  \n'), 'bad_request', 400);
    expectRejected(() => decodeRequest(plainAccount, signedQuery(), '<xml><ToUserName>a</xml>'), 'bad_request', 400);
    const xxe = `<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>${INNER.replace('你好 🙂', '&x;')}`;
    expectRejected(() => decodeRequest(plainAccount, signedQuery(), xxe), 'bad_request', 400);
  });

  it('answers 400 when a required field is missing', () => {
    expectRejected(() => decodeRequest(plainAccount, signedQuery(), INNER.replace(/<MsgId>.*<\/MsgId>/, '')), 'bad_request', 400);
  });
});

describe('decodeRequest: safe and compatible modes', () => {
  it('decrypts a safe-mode request sealed by wechat-crypto', () => {
    const { body, query } = safeModeRequest();
    const decoded = decodeRequest(aesAccount, query, body);
    expect(decoded).toMatchObject({ encrypted: true, timestamp: TIMESTAMP, nonce: NONCE });
    expect(decoded.message).toMatchObject({ kind: 'text', fromUserName: 'oUser', content: '你好 🙂' });
  });

  it('trusts only the envelope in compatible mode', () => {
    const { encrypt, query } = safeModeRequest();
    const forged = INNER.replace('你好 🙂', 'forged').replace('</xml>', `<Encrypt><![CDATA[${encrypt}]]></Encrypt></xml>`);
    expect(decodeRequest(aesAccount, query, forged).message).toMatchObject({ content: '你好 🙂' });
  });

  it('answers 400 when Encrypt is missing', () => {
    const { query } = safeModeRequest();
    expectRejected(() => decodeRequest(aesAccount, query, INNER), 'bad_request', 400);
  });

  it('answers 403 to a missing or wrong msg_signature', () => {
    const { body, query } = safeModeRequest();
    expectRejected(() => decodeRequest(aesAccount, { ...query, msg_signature: undefined }, body), 'bad_signature', 403);
    expectRejected(() => decodeRequest(aesAccount, { ...query, msg_signature: sign(TOKEN, 'x') }, body), 'bad_signature', 403);
    const other = safeModeRequest(INNER.replace('你好', 'other'));
    expectRejected(() => decodeRequest(aesAccount, { ...query, msg_signature: other.query.msg_signature }, body), 'bad_signature', 403);
  });

  it('answers 400 to an encrypted request when no EncodingAESKey is configured', () => {
    const { body, query } = safeModeRequest();
    expectRejected(() => decodeRequest(plainAccount, query, body), 'bad_request', 400);
  });

  it('answers 400 to an envelope sealed for another AppID', () => {
    const { body, query } = safeModeRequest(INNER, new WXBizMsgCrypt(TOKEN, KEY, 'wx0000000000000000'));
    expectRejected(() => decodeRequest(aesAccount, query, body), 'decrypt_failed', 400);
  });

  it('answers 400 to a correctly signed but garbage Encrypt', () => {
    const encrypt = Buffer.alloc(64, 1).toString('base64');
    const body = `<xml><Encrypt><![CDATA[${encrypt}]]></Encrypt></xml>`;
    const query = signedQuery({ encrypt_type: 'aes', msg_signature: sign(TOKEN, TIMESTAMP, NONCE, encrypt) });
    expectRejected(() => decodeRequest(aesAccount, query, body), 'decrypt_failed', 400);
  });

  it('answers 400 to hostile XML inside the envelope', () => {
    const { body, query } = safeModeRequest('<!DOCTYPE xml [<!ENTITY a "b">]><xml><A>&a;</A></xml>');
    expectRejected(() => decodeRequest(aesAccount, query, body), 'bad_request', 400);
  });
});

describe('encodeReply', () => {
  const reply = buildTextReplyXml({ toUser: 'oUser', fromUser: 'gh_7f083739789a', content: '答复 ]]> ✅', createTime: 1 });

  it('returns the reply as is in plain mode', () => {
    expect(encodeReply(aesAccount, reply, false)).toBe(reply);
  });

  it('seals and signs the reply so that wechat-crypto opens it', () => {
    const xml = encodeReply(aesAccount, reply, true, { timestamp: TIMESTAMP, nonce: NONCE });
    const fields = parseXml(xml);
    expect(Object.keys(fields)).toEqual(['Encrypt', 'MsgSignature', 'TimeStamp', 'Nonce']);
    expect(fields).toMatchObject({ TimeStamp: TIMESTAMP, Nonce: NONCE });
    const encrypt = fields.Encrypt ?? '';
    expect(fields.MsgSignature).toBe(wechat.getSignature(TIMESTAMP, NONCE, encrypt));
    expect(wechat.decrypt(encrypt)).toEqual({ message: reply, id: APP_ID });
  });

  it('uses a fresh timestamp and a random nonce unless given', () => {
    const now = Math.floor(Date.now() / 1000);
    const a = parseXml(encodeReply(aesAccount, reply, true));
    const b = parseXml(encodeReply(aesAccount, reply, true));
    expect(Number(a.TimeStamp)).toBeGreaterThanOrEqual(now);
    expect(Number(a.TimeStamp)).toBeLessThanOrEqual(now + 2);
    expect(a.Nonce).toMatch(/^\d{10}$/);
    expect(a.Nonce).not.toBe(b.Nonce);
    expect(a.MsgSignature).toBe(wechat.getSignature(a.TimeStamp ?? '', a.Nonce ?? '', a.Encrypt ?? ''));
  });

  it('never seals "success" or the empty body, which mean no reply in every mode', () => {
    expect(encodeReply(aesAccount, 'success', true)).toBe('success');
    expect(encodeReply(aesAccount, '', true)).toBe('');
  });

  it('completes a safe-mode round trip: WeChat seals, we decode and answer, WeChat opens', () => {
    const { body, query } = safeModeRequest();
    const { message, encrypted, timestamp, nonce } = decodeRequest(aesAccount, query, body);
    const answer = buildTextReplyXml({ toUser: message.fromUserName, fromUser: message.toUserName, content: 'pong' });
    const sealed = parseXml(encodeReply(aesAccount, answer, encrypted, { timestamp, nonce }));
    const opened = parseXml(wechat.decrypt(sealed.Encrypt ?? '').message);
    expect(opened).toMatchObject({ ToUserName: 'oUser', FromUserName: 'gh_7f083739789a', Content: 'pong' });
  });
});
