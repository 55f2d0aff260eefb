export * from './types.js';
export { SseDecoder, isDifyEvent, DEFAULT_MAX_SSE_BUFFER, type SseItem } from './sse.js';
export {
  createDifyClient,
  resolveDifyUrl,
  type DifyClient,
  type DifyClientOptions,
  type DifyAskRequest,
  type AudioToTextOptions,
} from './client.js';
