import { createHash, timingSafeEqual } from 'node:crypto';

/** The query parameters WeChat signs every callback with. */
export type SignatureParams = {
  signature?: string | undefined;
  timestamp?: string | undefined;
  nonce?: string | undefined;
};

/** The query parameters plus the `Encrypt` value that safe and compatible modes sign. */
export type MsgSignatureParams = {
  msgSignature?: string | undefined;
  timestamp?: string | undefined;
  nonce?: string | undefined;
  encrypt?: string | undefined;
};

/**
 * WeChat's signature: sort the parts, join them, SHA-1 hex.
 * https://developers.weixin.qq.com/doc/offiaccount/Basic_Information/Access_Overview.html
 */
export function sha1Signature(...parts: string[]): string {
  // Default sort compares UTF-16 code units, which equals WeChat's byte order for the ASCII values it signs.
  return createHash('sha1').update([...parts].sort().join('')).digest('hex');
}

/** Checks `signature` over (token, timestamp, nonce); false when anything is missing. */
export function verifySignature(token: string, params: SignatureParams): boolean {
  const { signature, timestamp, nonce } = params;
  if (!signature || !timestamp || !nonce) return false;
  return safeEqual(sha1Signature(token, timestamp, nonce), signature);
}

/**
 * Checks `msg_signature` over (token, timestamp, nonce, Encrypt); false when anything is missing.
 * https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Message_encryption_and_decryption_instructions.html
 */
export function verifyMsgSignature(token: string, params: MsgSignatureParams): boolean {
  const { msgSignature, timestamp, nonce, encrypt } = params;
  if (!msgSignature || !timestamp || !nonce || !encrypt) return false;
  return safeEqual(sha1Signature(token, timestamp, nonce, encrypt), msgSignature);
}

// timingSafeEqual throws on different lengths; the length of a SHA-1 hex is public, so checking it first leaks nothing.
function safeEqual(expected: string, given: string): boolean {
  const a = Buffer.from(expected, 'utf8');
  const b = Buffer.from(given, 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}
