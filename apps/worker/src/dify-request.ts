import type { EventMessage, InboundMessage, Translate } from '@wxdify/core';

/** What one follower message becomes for Dify: the query text and the `inputs` the seed plugin sent. */
export interface DifyRequestParts {
  query: string;
  inputs: Record<string, string>;
  /** Image URL to attach as a Dify file when the app accepts images. */
  imageUrl?: string;
  /** Set when the service answers by itself, without Dify (e.g. a voice message with no transcript). */
  directAnswer?: string;
}

/** What the request depends on besides the message. */
export interface DifyRequestContext {
  tr: Translate;
  /** The configured WELCOME_MESSAGE, if any (the catalogue's `welcome` is not used here). */
  welcomeMessage?: string | undefined;
  /** Dify's transcript of a voice message that came without WeChat's `Recognition`. */
  transcript?: string | undefined;
}

/** WeChat prefixes the scene of a follow through a parameterised QR code; SCAN sends it bare. */
const SCENE_PREFIX = 'qrscene_';

/**
 * Maps a WeChat message to Dify's query and inputs. `inputs` carry msgId, msgType, fromUser,
 * createTime and the type's own fields, as the seed plugin did. Dify keeps a conversation's first
 * inputs (later ones are ignored), so what matters for later turns is in the query too.
 */
export function buildDifyRequest(message: InboundMessage, ctx: DifyRequestContext): DifyRequestParts {
  const { tr } = ctx;
  const inputs: Record<string, string> = {
    msgId: message.msgId ?? '',
    msgType: message.msgType,
    fromUser: message.fromUserName,
    createTime: message.createTime,
  };
  switch (message.kind) {
    case 'text':
      return { query: message.content, inputs };
    case 'image':
      return { query: tr('imageNote', { url: message.picUrl }), inputs: { ...inputs, picUrl: message.picUrl, mediaId: message.mediaId }, imageUrl: message.picUrl };
    case 'voice': {
      const text = message.recognition?.trim() || ctx.transcript?.trim();
      if (!text) return { query: '', inputs, directAnswer: tr('voiceUnavailable') };
      return { query: text, inputs: { ...inputs, mediaId: message.mediaId, format: message.format, recognition: text } };
    }
    case 'video':
    case 'shortvideo':
      return { query: tr('videoNote'), inputs: { ...inputs, mediaId: message.mediaId, thumbMediaId: message.thumbMediaId } };
    case 'location':
      return {
        query: tr('locationNote', { label: message.label, x: message.locationX, y: message.locationY }),
        inputs: { ...inputs, locationX: message.locationX, locationY: message.locationY, scale: message.scale, label: message.label },
      };
    case 'link':
      return {
        query: tr('linkNote', { title: message.title, description: message.description, url: message.url }),
        inputs: { ...inputs, title: message.title, description: message.description, url: message.url },
      };
    case 'event':
      return eventRequest(message, inputs, ctx);
    default:
      return { query: '', inputs, directAnswer: tr('unsupported') };
  }
}

/**
 * Follow (`subscribe`, with `qrscene_<scene>` when through a QR code) and `SCAN` (a follower scanning
 * a QR code; EventKey is the bare scene) get WELCOME_MESSAGE when one is configured, else Dify gets
 * `subscribe [scene]` / `SCAN <scene>`. A menu `CLICK` sends its EventKey as the query. Other events
 * that reach the worker (scancode_push, pic_sysphoto …) go as `<Event> <EventKey>`.
 */
function eventRequest(message: EventMessage, base: Record<string, string>, ctx: DifyRequestContext): DifyRequestParts {
  const key = message.eventKey ?? '';
  const inputs = { ...base, event: message.event, eventKey: key };
  if (message.event === 'subscribe' || message.event === 'SCAN') {
    if (ctx.welcomeMessage) return { query: '', inputs, directAnswer: ctx.welcomeMessage };
    const scene = key.startsWith(SCENE_PREFIX) ? key.slice(SCENE_PREFIX.length) : message.event === 'SCAN' ? key : '';
    return { query: scene ? `${message.event} ${scene}` : message.event, inputs: { ...inputs, scene } };
  }
  if (message.event === 'CLICK' && key) return { query: key, inputs };
  return { query: key ? `${message.event} ${key}` : message.event, inputs };
}
