import type { InboundMessage, Translate } from '@wxdify/core';

/** What one follower message becomes for Dify: the query text and the `inputs` the seed plugin sent. */
export interface DifyRequestParts {
  query: string;
  inputs: Record<string, string>;
  /** Image URL to attach as a Dify file when the app accepts images. */
  imageUrl?: string;
  /** Set when the service answers by itself, without Dify (e.g. a voice message with no transcript). */
  directAnswer?: string;
}

/**
 * Maps a WeChat message to Dify's query and inputs. `inputs` carry msgId, msgType, fromUser,
 * createTime and the type's own fields, as the seed plugin did.
 */
export function buildDifyRequest(message: InboundMessage, tr: Translate): DifyRequestParts {
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
    case 'voice':
      if (!message.recognition?.trim()) return { query: '', inputs, directAnswer: tr('voiceUnavailable') };
      return {
        query: message.recognition.trim(),
        inputs: { ...inputs, mediaId: message.mediaId, format: message.format, recognition: message.recognition ?? '' },
      };
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
      return {
        query: message.eventKey ? `${message.event} ${message.eventKey}` : message.event,
        inputs: { ...inputs, event: message.event, eventKey: message.eventKey ?? '' },
      };
    default:
      return { query: '', inputs, directAnswer: tr('unsupported') };
  }
}
