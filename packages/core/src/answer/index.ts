export { WECHAT_TEXT_MAX_BYTES, splitText, utf8Length } from './split.js';
export { markdownToWeChat, shapeAnswer, stripReasoning } from './format.js';
export type { FormatOptions, ShapedAnswer } from './format.js';
