import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { sha1Signature, verifyMsgSignature, verifySignature } from '../packages/core/src/wechat/index.js';

// WeChat's official sample values; the expected digests were computed independently (Python hashlib).
const TOKEN = 'pamtest';
const TIMESTAMP = '1409304348';
const NONCE = 'xxxxxx';
const SIGNATURE = '76480565cbe296026c53aaacd1ad523a1ddba24f';
const MSG_SIGNATURE_OVER_ABC = '37e86d3605aec79549952877dac7db069c345a04';

describe('sha1Signature', () => {
  it('matches the known answer for the official sample', () => {
    expect(sha1Signature(TOKEN, TIMESTAMP, NONCE)).toBe(SIGNATURE);
    expect(sha1Signature(TOKEN, TIMESTAMP, NONCE, 'abc')).toBe(MSG_SIGNATURE_OVER_ABC);
  });

  it('sorts the parts, so their order does not matter', () => {
    expect(sha1Signature(NONCE, TOKEN, TIMESTAMP)).toBe(SIGNATURE);
  });

  it('is the SHA-1 hex of the sorted, joined parts', () => {
    const parts = ['b', 'a', 'c10', 'c2'];
    const expected = createHash('sha1').update('abc10c2').digest('hex');
    expect(sha1Signature(...parts)).toBe(expected);
    expect(parts).toEqual(['b', 'a', 'c10', 'c2']); // does not sort the caller's array
  });
});

describe('verifySignature', () => {
  it('accepts the right signature', () => {
    expect(verifySignature(TOKEN, { signature: SIGNATURE, timestamp: TIMESTAMP, nonce: NONCE })).toBe(true);
  });

  it('refuses a wrong signature, token, timestamp or nonce', () => {
    const wrong = SIGNATURE.replace(/^7/, '8');
    expect(verifySignature(TOKEN, { signature: wrong, timestamp: TIMESTAMP, nonce: NONCE })).toBe(false);
    expect(verifySignature('other', { signature: SIGNATURE, timestamp: TIMESTAMP, nonce: NONCE })).toBe(false);
    expect(verifySignature(TOKEN, { signature: SIGNATURE, timestamp: '1409304349', nonce: NONCE })).toBe(false);
    expect(verifySignature(TOKEN, { signature: SIGNATURE, timestamp: TIMESTAMP, nonce: 'yyyyyy' })).toBe(false);
  });

  it('refuses signatures of another length without throwing', () => {
    for (const signature of ['', 'abc', `${SIGNATURE}0`, SIGNATURE.slice(1), '中'.repeat(40)]) {
      expect(verifySignature(TOKEN, { signature, timestamp: TIMESTAMP, nonce: NONCE })).toBe(false);
    }
  });

  it('refuses a signature one character off, wherever that character is', () => {
    for (let i = 0; i < SIGNATURE.length; i++) {
      const other = SIGNATURE[i] === '0' ? '1' : '0';
      const signature = `${SIGNATURE.slice(0, i)}${other}${SIGNATURE.slice(i + 1)}`;
      expect(verifySignature(TOKEN, { signature, timestamp: TIMESTAMP, nonce: NONCE }), `position ${i}`).toBe(false);
      expect(verifyMsgSignature(TOKEN, { msgSignature: signature, timestamp: TIMESTAMP, nonce: NONCE, encrypt: 'abc' })).toBe(false);
    }
  });

  it('refuses upper-case hex, as WeChat only sends lower case', () => {
    expect(verifySignature(TOKEN, { signature: SIGNATURE.toUpperCase(), timestamp: TIMESTAMP, nonce: NONCE })).toBe(false);
  });

  it('refuses when any value is missing', () => {
    expect(verifySignature(TOKEN, { timestamp: TIMESTAMP, nonce: NONCE })).toBe(false);
    expect(verifySignature(TOKEN, { signature: SIGNATURE, nonce: NONCE })).toBe(false);
    expect(verifySignature(TOKEN, { signature: SIGNATURE, timestamp: TIMESTAMP })).toBe(false);
    expect(verifySignature(TOKEN, {})).toBe(false);
  });
});

describe('verifyMsgSignature', () => {
  const ok = { msgSignature: MSG_SIGNATURE_OVER_ABC, timestamp: TIMESTAMP, nonce: NONCE, encrypt: 'abc' };

  it('accepts the right msg_signature', () => {
    expect(verifyMsgSignature(TOKEN, ok)).toBe(true);
  });

  it('refuses a msg_signature over another Encrypt', () => {
    expect(verifyMsgSignature(TOKEN, { ...ok, encrypt: 'abd' })).toBe(false);
    expect(verifyMsgSignature(TOKEN, { ...ok, msgSignature: SIGNATURE })).toBe(false);
  });

  it('refuses when any value is missing', () => {
    expect(verifyMsgSignature(TOKEN, { ...ok, msgSignature: undefined })).toBe(false);
    expect(verifyMsgSignature(TOKEN, { ...ok, encrypt: undefined })).toBe(false);
    expect(verifyMsgSignature(TOKEN, { ...ok, encrypt: '' })).toBe(false);
    expect(verifyMsgSignature(TOKEN, { ...ok, timestamp: undefined })).toBe(false);
    expect(verifyMsgSignature(TOKEN, { ...ok, nonce: undefined })).toBe(false);
  });
});

// Timing cannot be measured reliably on a shared machine (a 40-character `===` differs by nanoseconds),
// so this reads the source: both checks go through crypto.timingSafeEqual, and nothing that checks a
// request's signature compares strings directly.
describe('constant-time comparison', () => {
  const source = (file: string) => readFileSync(new URL(`../packages/core/src/wechat/${file}`, import.meta.url), 'utf8');

  it('compares signatures with crypto.timingSafeEqual only', () => {
    const signature = source('signature.ts');
    expect(signature).toMatch(/import \{[^}]*\btimingSafeEqual\b[^}]*\} from 'node:crypto'/);
    expect(signature).toMatch(/function safeEqual\([^)]*\): boolean \{[^}]*timingSafeEqual\(/);
    for (const fn of ['verifySignature', 'verifyMsgSignature']) {
      const body = signature.slice(signature.indexOf(`export function ${fn}(`)).split('\n}\n')[0]!;
      expect(body, fn).toMatch(/return safeEqual\(sha1Signature\(/);
      expect(body, fn).not.toMatch(/[!=]==?/);
    }
    // `msgSignature === undefined` is a presence check, not a comparison.
    expect(source('server.ts')).not.toMatch(/[Ss]ignature\s*[!=]==?(?!=)(?!\s*undefined\b)|[!=]==?\s*\w*[Ss]ignature/);
  });
});
