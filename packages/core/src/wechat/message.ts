import { RequestRejectedError } from '../errors.js';

/*
 * Inbound messages and events, named after WeChat's docs:
 * https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Receiving_standard_messages.html
 * https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Receiving_event_pushes.html
 * Every value stays a string: MsgId exceeds 2^53, and coordinates keep the precision WeChat sent.
 */

/** Event names WeChat documents for the callback; other events (menu scans, template results …) keep their name. */
export type EventName = 'subscribe' | 'unsubscribe' | 'SCAN' | 'LOCATION' | 'CLICK' | 'VIEW' | (string & {});

type Common = {
  toUserName: string;
  fromUserName: string;
  createTime: string;
  msgType: string;
  /** Every element of the body, flattened by `parseXml`, for fields this type does not name. */
  raw: Readonly<Record<string, string>>;
};

type Message<K extends string, F> = Common & { kind: K; msgType: K; msgId: string } & F;

/** A text message. */
export type TextMessage = Message<'text', { content: string }>;
/** An image message. */
export type ImageMessage = Message<'image', { picUrl: string; mediaId: string }>;
/** A voice message; `recognition` only when speech recognition is enabled for the account. */
export type VoiceMessage = Message<'voice', { mediaId: string; format: string; recognition?: string }>;
/** A video message. */
export type VideoMessage = Message<'video', { mediaId: string; thumbMediaId: string }>;
/** A short-video message. */
export type ShortVideoMessage = Message<'shortvideo', { mediaId: string; thumbMediaId: string }>;
/** A location the user sent (Location_X is the latitude). */
export type LocationMessage = Message<
  'location',
  { locationX: string; locationY: string; scale: string; label: string }
>;
/** A link message. */
export type LinkMessage = Message<'link', { title: string; description: string; url: string }>;
/** An event push: follow, scan, location report, menu click … */
export type EventMessage = Common & {
  kind: 'event';
  msgType: 'event';
  msgId?: string;
  event: EventName;
  eventKey?: string;
  ticket?: string;
  latitude?: string;
  longitude?: string;
  precision?: string;
};
/** A message type this code does not know yet; `msgType` says which. */
export type UnknownMessage = Common & { kind: 'unknown'; msgId: string };

/** Everything the callback can deliver, discriminated by `kind`. */
export type InboundMessage =
  | TextMessage
  | ImageMessage
  | VoiceMessage
  | VideoMessage
  | ShortVideoMessage
  | LocationMessage
  | LinkMessage
  | EventMessage
  | UnknownMessage;

/**
 * OpenIDs and original ids (`gh_…`) are letters, digits, `_` and `-`. The ids go into BullMQ job ids and Redis keys,
 * where anything else (BullMQ refuses `:` in a job id) would fail only after the attempt was recorded.
 */
const WECHAT_ID = /^[A-Za-z0-9_-]{1,128}$/;
/** MsgId (beyond 2^53, hence a string) and CreateTime are decimal integers. */
const DIGITS = /^[0-9]{1,32}$/;

/**
 * Types the flat fields of a callback body; throws `RequestRejectedError('bad_request', 400)` when a required one is
 * absent, empty or not of WeChat's form (ids, MsgId, CreateTime). Only the fields the service relies on are required
 * (ids, Content, Event); other documented fields read as '' when missing rather than refusing a message we could
 * still answer.
 */
export function parseInboundMessage(fields: Record<string, string>): InboundMessage {
  const msgType = need(fields, 'MsgType');
  const common: Common = {
    toUserName: need(fields, 'ToUserName', WECHAT_ID),
    fromUserName: need(fields, 'FromUserName', WECHAT_ID),
    createTime: need(fields, 'CreateTime', DIGITS),
    msgType,
    raw: fields,
  };
  if (msgType === 'event') return parseEvent(fields, common);
  const base = { ...common, msgId: need(fields, 'MsgId', DIGITS) };
  const get = (name: string): string => fields[name] ?? '';
  switch (msgType) {
    case 'text':
      return { ...base, kind: msgType, msgType, content: need(fields, 'Content') };
    case 'image':
      return { ...base, kind: msgType, msgType, picUrl: get('PicUrl'), mediaId: get('MediaId') };
    case 'voice':
      return {
        ...base, kind: msgType, msgType,
        mediaId: get('MediaId'), format: get('Format'), ...opt('recognition', fields.Recognition),
      };
    case 'video':
      return { ...base, kind: msgType, msgType, mediaId: get('MediaId'), thumbMediaId: get('ThumbMediaId') };
    case 'shortvideo':
      return { ...base, kind: msgType, msgType, mediaId: get('MediaId'), thumbMediaId: get('ThumbMediaId') };
    case 'location':
      return {
        ...base, kind: msgType, msgType,
        locationX: get('Location_X'), locationY: get('Location_Y'), scale: get('Scale'), label: get('Label'),
      };
    case 'link':
      return { ...base, kind: msgType, msgType, title: get('Title'), description: get('Description'), url: get('Url') };
    default:
      return { ...base, kind: 'unknown' };
  }
}

function parseEvent(fields: Record<string, string>, common: Common): EventMessage {
  return {
    ...common,
    kind: 'event',
    msgType: 'event',
    event: need(fields, 'Event'),
    ...opt('msgId', fields.MsgId),
    ...opt('eventKey', fields.EventKey),
    ...opt('ticket', fields.Ticket),
    ...opt('latitude', fields.Latitude),
    ...opt('longitude', fields.Longitude),
    ...opt('precision', fields.Precision),
  };
}

function need(fields: Record<string, string>, name: string, form?: RegExp): string {
  const value = fields[name];
  if (value === undefined || value === '') throw new RequestRejectedError('bad_request', 400, `missing field ${name}`);
  // The value is the sender's, not ours to log: the name says enough.
  if (form && !form.test(value)) throw new RequestRejectedError('bad_request', 400, `invalid field ${name}`);
  return value;
}

// Leaves the key out instead of setting it to undefined, so `'eventKey' in message` means WeChat sent it.
function opt<K extends string>(key: K, value: string | undefined): { [P in K]?: string } {
  return value === undefined ? {} : ({ [key]: value } as { [P in K]?: string });
}
