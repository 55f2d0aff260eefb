/** The WeChat Official Account wire protocol: signatures, the AES envelope, XML in and out, typed messages. */
export { sha1Signature, verifySignature, verifyMsgSignature } from './signature.js';
export type { SignatureParams, MsgSignatureParams } from './signature.js';
export { Encryptor, createEncryptor } from './crypto.js';
export type { EncryptorOptions } from './crypto.js';
export { parseXml, MAX_TEXT_BYTES } from './xml.js';
export { parseInboundMessage } from './message.js';
export type {
  EventName,
  InboundMessage,
  TextMessage,
  ImageMessage,
  VoiceMessage,
  VideoMessage,
  ShortVideoMessage,
  LocationMessage,
  LinkMessage,
  EventMessage,
  UnknownMessage,
} from './message.js';
export { cdata, buildTextReplyXml, buildImageReplyXml, buildEncryptedReplyXml } from './reply.js';
export type { ReplyAddress } from './reply.js';
export { verifyEcho, checkSignature, decodeRequest, encodeReply } from './server.js';
export type { WeChatAccountKeys, CallbackQuery, DecodedRequest } from './server.js';
export { WeChatSimulator, type CallbackMode, type SimulatorOptions, type AttemptResult, type DeliveryResult } from './simulator.js';
