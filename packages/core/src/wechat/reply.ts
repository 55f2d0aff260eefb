import type { Encryptor } from './crypto.js';
import { sha1Signature } from './signature.js';
import { AppError } from '../errors.js';

/*
 * Passive replies: https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Passive_user_reply_message.html
 * Encrypted form: https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Message_encryption_and_decryption_instructions.html
 */

/** Who a passive reply goes to: swap the inbound ToUserName and FromUserName. */
export type ReplyAddress = { toUser: string; fromUser: string; createTime?: number };

// Characters XML 1.0 forbids even inside CDATA; one stray control character from a model makes WeChat drop the reply.
const NOT_XML_CHAR = /[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

/** Wraps text in CDATA; `]]>` is split across two sections and characters XML forbids are dropped. */
export function cdata(s: string): string {
  return `<![CDATA[${s.replace(NOT_XML_CHAR, '').replaceAll(']]>', ']]]]><![CDATA[>')}]]>`;
}

/** Builds a passive text reply. */
export function buildTextReplyXml(reply: ReplyAddress & { content: string }): string {
  return envelope(reply, 'text', `<Content>${cdata(reply.content)}</Content>`);
}

/** Builds a passive image reply for media already uploaded to WeChat. */
export function buildImageReplyXml(reply: ReplyAddress & { mediaId: string }): string {
  return envelope(reply, 'image', `<Image><MediaId>${cdata(reply.mediaId)}</MediaId></Image>`);
}

/** Seals a reply for safe or compatible mode, signed with MsgSignature = sha1(token, timestamp, nonce, Encrypt). */
export function buildEncryptedReplyXml(
  encryptor: Encryptor,
  token: string,
  replyXml: string,
  { timestamp, nonce }: { timestamp: string; nonce: string },
): string {
  const encrypt = encryptor.encrypt(replyXml);
  const signature = sha1Signature(token, digits(timestamp), nonce, encrypt);
  return (
    `<xml><Encrypt>${cdata(encrypt)}</Encrypt><MsgSignature>${cdata(signature)}</MsgSignature>` +
    `<TimeStamp>${timestamp}</TimeStamp><Nonce>${cdata(nonce)}</Nonce></xml>`
  );
}

function envelope(reply: ReplyAddress, msgType: string, body: string): string {
  const createTime = reply.createTime ?? Math.floor(Date.now() / 1000);
  return (
    `<xml><ToUserName>${cdata(reply.toUser)}</ToUserName><FromUserName>${cdata(reply.fromUser)}</FromUserName>` +
    `<CreateTime>${digits(String(createTime))}</CreateTime><MsgType>${cdata(msgType)}</MsgType>${body}</xml>`
  );
}

// Numbers go into the XML bare, as in WeChat's samples, so make sure they are numbers.
function digits(value: string): string {
  if (!/^\d+$/.test(value)) throw new AppError('internal', `not a unix timestamp: ${value}`);
  return value;
}
