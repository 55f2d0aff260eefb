import { randomInt } from 'node:crypto';
import { createEncryptor } from './crypto.js';
import { parseInboundMessage, type InboundMessage } from './message.js';
import { buildEncryptedReplyXml } from './reply.js';
import { verifyMsgSignature, verifySignature } from './signature.js';
import { parseXml } from './xml.js';
import { AppError, RequestRejectedError } from '../errors.js';

/*
 * The request-level API of the callback URL (EasyWeChat's `Server`). Modes and parameters:
 * https://developers.weixin.qq.com/doc/offiaccount/Basic_Information/Access_Overview.html
 * https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Message_encryption_and_decryption_instructions.html
 * `signature` is checked in every mode, plain included (EasyWeChat skips it there): it is all that stands between
 * the open internet and Dify when no EncodingAESKey is set.
 */

/** The secrets of one official account that the callback needs. */
export type WeChatAccountKeys = { appId: string; token: string; encodingAesKey?: string };

/** The callback's query string, one value per name. */
export type CallbackQuery = Record<string, string | undefined>;

/** A verified, decrypted and typed callback. */
export type DecodedRequest = { message: InboundMessage; encrypted: boolean; timestamp: string; nonce: string };

// An encrypted echostr holds at least random(16) + length(4) + AppID, i.e. two AES blocks once padded.
const ENCRYPTED_ECHOSTR = /^(?:[A-Za-z0-9+/]{4}){11,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Answers the GET that WeChat sends when the URL is configured; returns the body to send back. */
export function verifyEcho(account: WeChatAccountKeys, query: CallbackQuery): string {
  checkSignature(account, query);
  const { echostr, msg_signature: msgSignature, timestamp, nonce } = query;
  if (!echostr) throw new RequestRejectedError('bad_request', 400, 'missing echostr');
  // Official accounts send a plain echostr; an encrypted one (as WeCom sends) is opened when we hold the key.
  if (msgSignature === undefined || !account.encodingAesKey || !ENCRYPTED_ECHOSTR.test(echostr)) return echostr;
  if (!verifyMsgSignature(account.token, { msgSignature, timestamp, nonce, encrypt: echostr })) {
    throw new RequestRejectedError('bad_signature', 403, 'bad msg_signature');
  }
  return encryptorOf(account).decrypt(echostr);
}

/** Verifies, decrypts and parses a POST callback. */
export function decodeRequest(account: WeChatAccountKeys, query: CallbackQuery, body: string): DecodedRequest {
  const { timestamp, nonce } = checkSignature(account, query);
  if (body.trim() === '') throw new RequestRejectedError('bad_request', 400, 'empty body');
  // Compatible mode also sends the plaintext fields; they are unsigned, so only the envelope is trusted.
  const encrypted = query.encrypt_type === 'aes';
  const fields = encrypted ? parseXml(openEnvelope(account, query, body)) : parseXml(body);
  return { message: parseInboundMessage(fields), encrypted, timestamp, nonce };
}

/** Turns a reply into the response body: as is in plain mode, sealed and signed when the request was encrypted. */
export function encodeReply(
  account: WeChatAccountKeys,
  replyXml: string,
  encrypted: boolean,
  { timestamp, nonce }: { timestamp?: string; nonce?: string } = {},
): string {
  // "success" and the empty body mean "no reply" in every mode and must not be sealed (WeChat would try to parse them).
  if (!encrypted || replyXml === '' || replyXml === 'success') return replyXml;
  return buildEncryptedReplyXml(encryptorOf(account), account.token, replyXml, {
    timestamp: timestamp ?? String(Math.floor(Date.now() / 1000)),
    nonce: nonce ?? String(randomInt(1_000_000_000, 10_000_000_000)),
  });
}

/**
 * Checks the query's `signature` (403 when wrong): all a POST needs before its body is read, so a forged
 * request costs one hash instead of up to 1 MiB of reading. `decodeRequest` checks it again.
 */
export function checkSignature(account: WeChatAccountKeys, query: CallbackQuery): { timestamp: string; nonce: string } {
  const { signature, timestamp, nonce } = query;
  if (!timestamp || !nonce || !verifySignature(account.token, { signature, timestamp, nonce })) {
    throw new RequestRejectedError('bad_signature', 403, 'bad signature');
  }
  return { timestamp, nonce };
}

function openEnvelope(account: WeChatAccountKeys, query: CallbackQuery, body: string): string {
  const encrypt = parseXml(body).Encrypt;
  if (!encrypt) throw new RequestRejectedError('bad_request', 400, 'missing field Encrypt');
  const { msg_signature: msgSignature, timestamp, nonce } = query;
  if (!verifyMsgSignature(account.token, { msgSignature, timestamp, nonce, encrypt })) {
    throw new RequestRejectedError('bad_signature', 403, 'bad msg_signature');
  }
  if (!account.encodingAesKey) throw new RequestRejectedError('bad_request', 400, 'encrypted request but no EncodingAESKey');
  return encryptorOf(account).decrypt(encrypt);
}

function encryptorOf(account: WeChatAccountKeys) {
  if (!account.encodingAesKey) throw new AppError('internal', 'no EncodingAESKey configured for this account');
  return createEncryptor({ appId: account.appId, token: account.token, encodingAesKey: account.encodingAesKey });
}
