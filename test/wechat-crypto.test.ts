import { createCipheriv } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AppError, ConfigError } from '../packages/core/src/errors.js';
import { createEncryptor, Encryptor, sha1Signature } from '../packages/core/src/wechat/index.js';
import { SAMPLE, WXBizMsgCrypt } from './helpers/wechat-reference.js';
import { expectRejected } from './helpers/expect-rejected.js';


// WeChat's official sample account.
const { token: TOKEN, key: KEY, appId: APP_ID } = SAMPLE;
const AES_KEY = Buffer.from(`${KEY}=`, 'base64');

// Known answer: wechat-crypto's encrypt() with its random source pinned to RANDOM produced KAT_ENCRYPT.
const RANDOM = Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex');
const KAT_MESSAGE =
  '<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>' +
  '<CreateTime>1409304348</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好, WeChat]]></Content>' +
  '<MsgId>6054768590064713728</MsgId></xml>';
const KAT_ENCRYPT =
  'IG+0eOkLdhYW9kHtuT3HY8TG87hc45Kdhut1+tjYt50zUtLga41XNZSqPUjktQ3EqxpIiejPK+lHomLRRADZG4zGH0H1vZPpZishHj8kCSUwoP9Z+DZszRt6tFz0' +
  'pmfgMS3+xlRFF4DY+ZhEoLj0i28r074w7KqFd9M+6HYOrjhyQlHT9rl5unlSGeipg6HBY8Z8izMpHwlE1Et6TjGMd1JRD95MqUl8qULhhcjf3/u2BOOvmqyjQxHC' +
  'H8PacMtlfZiNoyytY1UIYCSQK8C75acB8WSLK+ZMNRn4BcvkMq/M1vKnR8Q3Yg33inKrL0sXhFTk2d3t2vW9v2/kWuU0ZL3pniHTGuC/JICqN/gy2Y0tORIzEhbY4' +
  'u/9G6T5XPcidFDHk8xhD3FNfKBc1xqc7clpfRqQR9C3PsV8Jwly+j4=';
const KAT_MSG_SIGNATURE = 'a26aab8ce661d0c5cf08a3da73a6306995f2452d'; // over (pamtest, 1409304348, xxxxxx, KAT_ENCRYPT)

const encryptor = createEncryptor({ appId: APP_ID, token: TOKEN, encodingAesKey: KEY });
const reference = new WXBizMsgCrypt(TOKEN, KEY, APP_ID);

/** Seals an arbitrary plaintext with the account's key, padding it ourselves (AES padding off), as an attacker could. */
function seal(parts: { message?: string | Buffer; length?: number; appId?: string }, pad: Buffer): string {
  const msg = Buffer.from(parts.message ?? '<xml></xml>');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(parts.length ?? msg.length);
  const plain = Buffer.concat([RANDOM, length, msg, Buffer.from(parts.appId ?? APP_ID, 'utf8'), pad]);
  const cipher = createCipheriv('aes-256-cbc', AES_KEY, AES_KEY.subarray(0, 16)).setAutoPadding(false);
  return Buffer.concat([cipher.update(plain), cipher.final()]).toString('base64');
}

/** Pads `length` bytes of body to a multiple of 32 with a chosen pattern. */
function padFor(bodyLength: number, fill: (count: number) => number[]): Buffer {
  return Buffer.from(fill(32 - (bodyLength % 32)));
}

function expectDecryptFailed(run: () => unknown, reason?: RegExp): void {
  expectRejected(run, 'decrypt_failed', 400, reason);
}

describe('Encryptor known answers', () => {
  it('encrypts the official sample account exactly as the reference does', () => {
    expect(encryptor.encrypt(KAT_MESSAGE, RANDOM)).toBe(KAT_ENCRYPT);
  });

  it('decrypts the known ciphertext', () => {
    expect(encryptor.decrypt(KAT_ENCRYPT)).toBe(KAT_MESSAGE);
  });

  it('signs the known ciphertext as the reference does', () => {
    expect(sha1Signature(TOKEN, '1409304348', 'xxxxxx', KAT_ENCRYPT)).toBe(KAT_MSG_SIGNATURE);
    expect(reference.getSignature('1409304348', 'xxxxxx', KAT_ENCRYPT)).toBe(KAT_MSG_SIGNATURE);
  });

  it('is the same class through new and createEncryptor', () => {
    expect(encryptor).toBeInstanceOf(Encryptor);
    expect(new Encryptor({ appId: APP_ID, token: TOKEN, encodingAesKey: KEY }).encrypt('x', RANDOM)).toBe(
      encryptor.encrypt('x', RANDOM),
    );
  });
});

describe('Encryptor against wechat-crypto', () => {
  const samples = ['', 'hello', '你好，世界', '👋🏽 emoji 𠮷 and 中文 mixed', 'x'.repeat(26), '長'.repeat(5000), KAT_MESSAGE];

  it.each(samples)('the reference decrypts what we encrypt (%#)', (text) => {
    expect(reference.decrypt(encryptor.encrypt(text))).toEqual({ message: text, id: APP_ID });
  });

  it.each(samples)('we decrypt what the reference encrypts (%#)', (text) => {
    expect(encryptor.decrypt(reference.encrypt(text))).toBe(text);
  });
});

describe('Encryptor round trips', () => {
  it('round-trips CJK and emoji', () => {
    const text = '<xml><Content><![CDATA[春眠不觉晓 🌸🐈‍⬛ こんにちは 안녕하세요]]></Content></xml>';
    expect(encryptor.decrypt(encryptor.encrypt(text))).toBe(text);
  });

  it('round-trips when the body fills whole blocks, so a full 32-byte pad block is added', () => {
    // 16 random + 4 length + 26 message + 18 AppID = 64 bytes.
    const text = 'a'.repeat(26);
    const sealed = encryptor.encrypt(text);
    expect(Buffer.from(sealed, 'base64')).toHaveLength(96);
    expect(encryptor.decrypt(sealed)).toBe(text);
  });

  it('uses a fresh random prefix each time', () => {
    expect(encryptor.encrypt('same')).not.toBe(encryptor.encrypt('same'));
  });
});

describe('Encryptor refusals', () => {
  it('refuses an envelope sealed for another AppID', () => {
    const other = createEncryptor({ appId: 'wx0000000000000000', token: TOKEN, encodingAesKey: KEY });
    expectDecryptFailed(() => encryptor.decrypt(other.encrypt('<xml></xml>')), /AppID/);
    expectDecryptFailed(() => encryptor.decrypt(new WXBizMsgCrypt(TOKEN, KEY, 'wx0000000000000000').encrypt('hi')), /AppID/);
  });

  it('refuses an AppID that only starts or ends like ours', () => {
    const body = 16 + 4 + 11;
    for (const appId of [`${APP_ID}x`, APP_ID.slice(0, -1), `x${APP_ID}`, '']) {
      const pad = padFor(body + appId.length, (n) => Array(n).fill(n));
      expectDecryptFailed(() => encryptor.decrypt(seal({ appId }, pad)), /AppID|length|short/);
    }
  });

  it('accepts a well-formed crafted envelope (the crafting helper is sound)', () => {
    const pad = padFor(16 + 4 + 11 + APP_ID.length, (n) => Array(n).fill(n));
    expect(encryptor.decrypt(seal({}, pad))).toBe('<xml></xml>');
  });

  it('refuses a pad byte of 0', () => {
    const pad = padFor(16 + 4 + 11 + APP_ID.length, (n) => [...Array(n - 1).fill(n), 0]);
    expectDecryptFailed(() => encryptor.decrypt(seal({}, pad)), /padding/);
  });

  it('refuses a pad byte above 32', () => {
    const pad = padFor(16 + 4 + 11 + APP_ID.length, (n) => [...Array(n - 1).fill(n), 33]);
    expectDecryptFailed(() => encryptor.decrypt(seal({}, pad)), /padding/);
    const all = padFor(16 + 4 + 11 + APP_ID.length, (n) => Array(n).fill(255));
    expectDecryptFailed(() => encryptor.decrypt(seal({}, all)), /padding/);
  });

  it('refuses inconsistent pad bytes, which wechat-crypto lets through', () => {
    const pad = padFor(16 + 4 + 11 + APP_ID.length, (n) => [...Array(n - 2).fill(n), n - 1, n]);
    const sealed = seal({}, pad);
    expectDecryptFailed(() => encryptor.decrypt(sealed), /padding/);
    expect(reference.decrypt(sealed)).toEqual({ message: '<xml></xml>', id: APP_ID });
  });

  it('refuses 16-byte padding where WeChat pads to 32', () => {
    // 16 + 4 + 2 + 18 = 40 bytes: WeChat pads 24 bytes of 24, AES-style PKCS#7 would pad 8 bytes of 8.
    const sealed = seal({ message: 'ab' }, Buffer.alloc(8, 8));
    expect(Buffer.from(sealed, 'base64')).toHaveLength(48);
    expectDecryptFailed(() => encryptor.decrypt(sealed), /32-byte blocks/);
    expect(encryptor.decrypt(seal({ message: 'ab' }, Buffer.alloc(24, 24)))).toBe('ab');
  });

  it('refuses a length field that overruns the envelope', () => {
    const pad = padFor(16 + 4 + 11 + APP_ID.length, (n) => Array(n).fill(n));
    expectDecryptFailed(() => encryptor.decrypt(seal({ length: 12 }, pad)), /overruns/);
    expectDecryptFailed(() => encryptor.decrypt(seal({ length: 0xffffffff }, pad)), /overruns/);
  });

  it('refuses a message that is not UTF-8', () => {
    const message = Buffer.from([0xff, 0xfe, 0x3c]);
    const pad = padFor(16 + 4 + message.length + APP_ID.length, (n) => Array(n).fill(n));
    expectDecryptFailed(() => encryptor.decrypt(seal({ message }, pad)), /UTF-8/);
  });

  it('refuses truncated ciphertext', () => {
    expectDecryptFailed(() => encryptor.decrypt(KAT_ENCRYPT.slice(0, 100))); // not even whole base64 quanta
    expectDecryptFailed(() => encryptor.decrypt(KAT_ENCRYPT.slice(0, 128))); // 96 bytes: whole blocks, envelope cut short
    const bytes = Buffer.from(KAT_ENCRYPT, 'base64');
    expectDecryptFailed(() => encryptor.decrypt(bytes.subarray(0, bytes.length - 32).toString('base64')));
    expectDecryptFailed(() => encryptor.decrypt(bytes.subarray(0, bytes.length - 5).toString('base64')));
  });

  it('refuses garbage and empty input', () => {
    for (const garbage of ['', '====', 'not base64 at all!', `${KAT_ENCRYPT}!`, `${KAT_ENCRYPT.slice(0, 40)} ${KAT_ENCRYPT.slice(40)}`]) {
      expectDecryptFailed(() => encryptor.decrypt(garbage));
    }
    expectDecryptFailed(() => encryptor.decrypt(Buffer.alloc(64, 7).toString('base64')));
  });

  it('refuses ciphertext sealed with another key', () => {
    const otherKey = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg';
    expectDecryptFailed(() => encryptor.decrypt(new WXBizMsgCrypt(TOKEN, otherKey, APP_ID).encrypt(KAT_MESSAGE)));
  });
});

describe('Encryptor configuration', () => {
  it('refuses an EncodingAESKey that is not 43 base64 characters', () => {
    for (const encodingAesKey of ['', KEY.slice(1), `${KEY}=`, `${KEY.slice(0, 42)}!`]) {
      expect(() => createEncryptor({ appId: APP_ID, token: TOKEN, encodingAesKey })).toThrow(ConfigError);
    }
  });

  it('refuses an empty AppID, which would make the envelope check meaningless', () => {
    expect(() => createEncryptor({ appId: '', token: TOKEN, encodingAesKey: KEY })).toThrow(ConfigError);
  });

  it('refuses a random prefix that is not 16 bytes', () => {
    expect(() => encryptor.encrypt('x', Buffer.alloc(15))).toThrow(AppError);
  });
});
