import sax from 'sax';
import { RequestRejectedError } from '../errors.js';

/** Largest text of one element, in UTF-8 bytes; a WeChat text message is far below it (Content is capped at 2048 bytes). */
export const MAX_TEXT_BYTES = 64 * 1024;

type Frame = { name: string; text: string; bytes: number; hasChildren: boolean };

// strictEntities (missing from @types/sax) limits named entities to XML's five, so HTML names like &nbsp; are refused.
const SAX_OPTIONS: sax.SAXOptions & { strictEntities: boolean } = { strictEntities: true, trim: false, normalize: false };

/**
 * Reads a WeChat callback body (`<xml><ToUserName>…</ToUserName>…</xml>`) into a flat record of element texts.
 *
 * - The root must be `<xml>`; the direct children become keys, with their text and CDATA joined exactly as sent.
 *   Whitespace-only text between tags is dropped, other text is kept untrimmed.
 * - Nested leaves (ScanCodeInfo/ScanType, SendLocationInfo/Location_X, SendPicsInfo/Count …) are flattened under their
 *   own names; a direct child always wins a name clash, and among nested leaves the first one wins.
 * - Attributes are ignored; numbers such as MsgId and CreateTime stay strings (MsgId exceeds 2^53).
 * - Any DOCTYPE is refused, so no DTD entity is ever defined, let alone expanded; only XML's five predefined
 *   entities and character references are decoded. Text over MAX_TEXT_BYTES and malformed XML are refused too.
 * Every refusal is `RequestRejectedError('bad_request', 400)`.
 */
export function parseXml(xml: string): Record<string, string> {
  const top = new Map<string, string>();
  const nested = new Map<string, string>();
  const stack: Frame[] = [];
  let rootSeen = false;
  let rootClosed = false;

  const parser = sax.parser(true, SAX_OPTIONS);
  parser.onerror = (err) => {
    throw rejected(`malformed XML: ${err.message.split('\n')[0] ?? ''}`, err);
  };
  parser.ondoctype = () => {
    throw rejected('DOCTYPE is not allowed');
  };
  parser.onopentag = (node) => {
    if (stack.length === 0) {
      if (rootSeen) throw rejected('more than one root element');
      if (node.name !== 'xml') throw rejected('root element must be <xml>');
      rootSeen = true;
    }
    const parent = stack.at(-1);
    if (parent) parent.hasChildren = true;
    stack.push({ name: node.name, text: '', bytes: 0, hasChildren: false });
  };
  const onText = (text: string): void => {
    const frame = stack.at(-1);
    if (!frame) return; // whitespace around the root; sax itself refuses anything else there
    frame.bytes += Buffer.byteLength(text, 'utf8');
    if (frame.bytes > MAX_TEXT_BYTES) throw rejected(`text of <${frame.name}> exceeds ${MAX_TEXT_BYTES} bytes`);
    frame.text += text;
  };
  parser.ontext = (text) => {
    if (text.trim() !== '') onText(text);
  };
  parser.oncdata = onText;
  parser.onclosetag = () => {
    const frame = stack.pop();
    if (!frame) return;
    if (stack.length === 0) rootClosed = true;
    else if (!frame.hasChildren) record(stack.length === 1 ? top : nested, frame);
  };

  try {
    parser.write(xml).close();
  } catch (err) {
    if (err instanceof RequestRejectedError) throw err;
    throw rejected('malformed XML', err);
  }
  if (!rootClosed) throw rejected('no <xml> root element');
  return toRecord(nested, top);
}

function record(into: Map<string, string>, frame: Frame): void {
  if (!into.has(frame.name)) into.set(frame.name, frame.text);
}

// A null prototype, so names like `__proto__` or `constructor` in a body are plain keys and nothing is inherited.
function toRecord(nested: Map<string, string>, top: Map<string, string>): Record<string, string> {
  const out = Object.create(null) as Record<string, string>;
  for (const [name, text] of nested) out[name] = text;
  for (const [name, text] of top) out[name] = text;
  return out;
}

function rejected(message: string, cause?: unknown): RequestRejectedError {
  return new RequestRejectedError('bad_request', 400, message, cause);
}
