import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { AppError, ConfigError, RequestRejectedError } from '../errors.js';

/** What an account needs to open and seal envelopes. */
export type EncryptorOptions = { appId: string; token: string; encodingAesKey: string };

/*
 * The envelope of safe and compatible modes, as in WeChat's WXBizMsgCrypt samples and node-webot's wechat-crypto
 * (https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Message_encryption_and_decryption_instructions.html):
 *
 *   key        = base64decode(EncodingAESKey + '=')        43 characters -> 32 bytes, AES-256
 *   iv         = key[0..16]
 *   plaintext  = random(16) | uint32 big-endian len(msg) | msg (UTF-8) | AppID
 *   padded     = PKCS#7 with a 32-byte block (not AES's 16): 1..32 bytes, each equal to the count
 *   Encrypt    = base64(AES-256-CBC(padded)) with the cipher's own padding off
 *
 * Decryption refuses anything that does not fit exactly: bad base64, bad padding, a length that overruns, an AppID
 * that is not ours (co-wechat skips that check, which lets one account's traffic be replayed to another).
 */
const BLOCK = 32;
const RANDOM_BYTES = 16;
const LENGTH_BYTES = 4;
const KEY_RE = /^[A-Za-z0-9+/]{43}$/;
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})+$|^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Opens and seals WeChat's AES envelope for one account (EasyWeChat's `Encryptor`). */
export class Encryptor {
  readonly appId: string;
  readonly token: string;
  readonly #key: Buffer;
  readonly #iv: Buffer;
  readonly #appId: Buffer;

  constructor(options: EncryptorOptions) {
    if (!KEY_RE.test(options.encodingAesKey)) throw new ConfigError(['encodingAesKey must be 43 base64 characters']);
    if (!options.appId) throw new ConfigError(['appId is required to check the envelope']);
    this.appId = options.appId;
    this.token = options.token;
    this.#key = Buffer.from(`${options.encodingAesKey}=`, 'base64');
    this.#iv = this.#key.subarray(0, 16);
    this.#appId = Buffer.from(options.appId, 'utf8');
  }

  /** Opens an `Encrypt` value; throws `RequestRejectedError('decrypt_failed', 400)` on any flaw. */
  decrypt(encryptBase64: string): string {
    const plain = this.#unpad(this.#decipher(encryptBase64));
    if (plain.length < RANDOM_BYTES + LENGTH_BYTES + this.#appId.length) throw rejected('envelope too short');
    const length = plain.readUInt32BE(RANDOM_BYTES);
    const start = RANDOM_BYTES + LENGTH_BYTES;
    if (length > plain.length - start - this.#appId.length) throw rejected('message length overruns the envelope');
    if (!plain.subarray(start + length).equals(this.#appId)) throw rejected('AppID in the envelope does not match');
    try {
      return utf8.decode(plain.subarray(start, start + length));
    } catch (err) {
      throw rejected('message is not UTF-8', err);
    }
  }

  /** Seals `xml` into an `Encrypt` value (base64); `random16` only for known-answer tests. */
  encrypt(xml: string, random16: Buffer = randomBytes(RANDOM_BYTES)): string {
    if (random16.length !== RANDOM_BYTES) throw new AppError('internal', 'random16 must be 16 bytes');
    const msg = Buffer.from(xml, 'utf8');
    const length = Buffer.alloc(LENGTH_BYTES);
    length.writeUInt32BE(msg.length);
    const body = Buffer.concat([random16, length, msg, this.#appId]);
    const pad = BLOCK - (body.length % BLOCK);
    const cipher = createCipheriv('aes-256-cbc', this.#key, this.#iv).setAutoPadding(false);
    return Buffer.concat([cipher.update(Buffer.concat([body, Buffer.alloc(pad, pad)])), cipher.final()]).toString('base64');
  }

  #decipher(encryptBase64: string): Buffer {
    // Node's base64 decoder skips junk silently; check the alphabet first so garbage cannot decrypt to anything.
    if (!BASE64_RE.test(encryptBase64)) throw rejected('Encrypt is not base64');
    const data = Buffer.from(encryptBase64, 'base64');
    // WeChat pads to 32 bytes, so anything else (even valid 16-byte PKCS#7) was not sealed by WeChat.
    if (data.length === 0 || data.length % BLOCK !== 0) throw rejected('ciphertext is not whole 32-byte blocks');
    try {
      const decipher = createDecipheriv('aes-256-cbc', this.#key, this.#iv).setAutoPadding(false);
      return Buffer.concat([decipher.update(data), decipher.final()]);
    } catch (err) {
      throw rejected('AES decryption failed', err);
    }
  }

  // wechat-crypto treats an out-of-range pad as "no padding" and never checks the pad bytes; we refuse both.
  #unpad(padded: Buffer): Buffer {
    const pad = padded.at(-1) ?? 0;
    if (pad < 1 || pad > BLOCK || pad > padded.length) throw rejected('bad PKCS#7 padding');
    for (let i = padded.length - pad; i < padded.length; i++) {
      if (padded[i] !== pad) throw rejected('bad PKCS#7 padding');
    }
    return padded.subarray(0, padded.length - pad);
  }
}

/** Builds the `Encryptor` of one account. */
export function createEncryptor(options: EncryptorOptions): Encryptor {
  return new Encryptor(options);
}

function rejected(message: string, cause?: unknown): RequestRejectedError {
  return new RequestRejectedError('decrypt_failed', 400, message, cause);
}
