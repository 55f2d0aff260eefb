/**
 * WeChat rejects customer-service text over 2048 bytes of UTF-8 (DESIGN.md invariant 6), so
 * long answers go out as several parts, cut where a reader would pause.
 */

/** WeChat's limit for one text message, in UTF-8 bytes. */
export const WECHAT_TEXT_MAX_BYTES = 2048;

/**
 * Break points from the most to the least preferred. Each match's `index + length` is where
 * the cut goes; whitespace around it is trimmed away.
 */
const BREAKS: readonly RegExp[] = [
  /\n[ \t\u3000]*\n/g, // paragraph: a blank line
  /\n/g, // line end
  /[.!?]["')\]]*(?=\s)|[。！？｡；…]+[」』”’）)\]]*/g, // sentence end (CJK needs no space)
  /\s/g, // space
];

/** A break this far into the window is always preferred to a better kind further back. */
const MIN_FILL = 0.5;

const graphemes = new Intl.Segmenter(undefined, { granularity: 'grapheme' });

/** Length of `s` in UTF-8 bytes (a lone surrogate counts as the 3-byte U+FFFD it becomes). */
export function utf8Length(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/** Splits `text` into trimmed, non-empty parts of at most `maxBytes` UTF-8 bytes each. */
export function splitText(text: string, maxBytes = WECHAT_TEXT_MAX_BYTES): string[] {
  if (!Number.isInteger(maxBytes) || maxBytes < 4) {
    throw new RangeError(`maxBytes must be an integer >= 4, got ${maxBytes}`);
  }
  const parts: string[] = [];
  let rest = text.trim();
  while (rest !== '') {
    if (utf8Length(rest) <= maxBytes) {
      parts.push(rest);
      break;
    }
    const cut = findCut(rest, maxBytes);
    parts.push(rest.slice(0, cut).trimEnd());
    rest = rest.slice(cut).trimStart();
  }
  return parts;
}

/** Index to cut `text` at so that the part before it fits and is not blank. */
function findCut(text: string, maxBytes: number): number {
  const limit = fittingPrefixLength(text, maxBytes);
  const window = text.slice(0, limit);
  const preferred = findBreak(window, Math.floor(limit * MIN_FILL));
  if (preferred !== undefined) return preferred;
  return findBreak(window, 0) ?? lastGraphemeBoundary(text, limit);
}

/**
 * The end of the last break of the best kind starting at or after `min`. The window starts
 * with non-whitespace (the rest is trimmed), so any break after index 0 leaves a non-blank part.
 */
function findBreak(window: string, min: number): number | undefined {
  for (const pattern of BREAKS) {
    let best: number | undefined;
    for (const match of window.matchAll(pattern)) {
      if (match.index >= Math.max(min, 1)) best = match.index + match[0].length;
    }
    if (best !== undefined) return best;
  }
  return undefined;
}

/** Length in UTF-16 units of the longest prefix of whole code points within `maxBytes`. */
function fittingPrefixLength(text: string, maxBytes: number): number {
  let bytes = 0;
  let length = 0;
  for (const char of text) {
    bytes += utf8Length(char);
    if (bytes > maxBytes) break;
    length += char.length;
  }
  return length;
}

/** The last grapheme boundary at or before `limit`, or `limit` itself if one cluster is longer. */
function lastGraphemeBoundary(text: string, limit: number): number {
  let boundary = 0;
  for (const { index, segment } of graphemes.segment(text)) {
    if (index + segment.length > limit) break;
    boundary = index + segment.length;
  }
  return boundary > 0 ? boundary : limit;
}
