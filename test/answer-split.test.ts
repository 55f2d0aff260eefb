import { describe, expect, it } from 'vitest';
import { splitText, utf8Length } from '../packages/core/src/answer/index.js';

const decoder = new TextDecoder('utf-8', { fatal: true });

/** Asserts the parts fit, are trimmed and non-empty, and cover `text` in order. */
function expectFaithfulSplit(text: string, parts: string[], maxBytes: number): void {
  let at = 0;
  for (const part of parts) {
    expect(utf8Length(part)).toBeLessThanOrEqual(maxBytes);
    expect(part).toBe(part.trim());
    expect(part).not.toBe('');
    const bytes = Buffer.from(part, 'utf8');
    expect(decoder.decode(bytes)).toBe(part);
    while (/\s/.test(text[at] ?? '')) at++;
    expect(text.startsWith(part, at)).toBe(true);
    at += part.length;
  }
  expect(text.slice(at).trim()).toBe('');
}

function mixedText(targetBytes: number): string {
  const pieces = [
    '这是一个用于测试的中文句子，包含标点。',
    'This is an English sentence with some words. ',
    '日本語の文章も混ぜます！',
    'Emoji: 👍🏽 👨‍👩‍👧‍👦 🇨🇳 ❤️ ',
    '\n',
    '\n\n',
    'Olá, ação! ',
  ];
  let text = '';
  for (let i = 0; utf8Length(text) < targetBytes; i++) text += pieces[(i * 7 + (i >> 2)) % pieces.length];
  return text;
}

describe('utf8Length', () => {
  it('counts UTF-8 bytes', () => {
    expect(utf8Length('a')).toBe(1);
    expect(utf8Length('é')).toBe(2);
    expect(utf8Length('中')).toBe(3);
    expect(utf8Length('😀')).toBe(4);
  });
});

describe('splitText', () => {
  it('returns nothing for empty or blank input', () => {
    expect(splitText('')).toEqual([]);
    expect(splitText(' \n\t\u3000 \n')).toEqual([]);
  });

  it('returns short text as one trimmed part', () => {
    expect(splitText('  hello\n')).toEqual(['hello']);
  });

  it('keeps a 20,000-byte mixed text within 2048 bytes per part, losing nothing', () => {
    const text = mixedText(20_000);
    const parts = splitText(text);
    expect(parts.length).toBeGreaterThanOrEqual(10);
    expectFaithfulSplit(text, parts, 2048);
    expect(parts.join('').replace(/\s/g, '')).toBe(text.replace(/\s/g, ''));
  });

  it('prefers a blank line to a line end, and a line end to a sentence end', () => {
    const para = 'a'.repeat(60);
    const line = 'b'.repeat(20);
    const text = `${para}\n\n${line}\n${'c'.repeat(10)}. ${'d'.repeat(30)}`;
    expect(splitText(text, 100)[0]).toBe(para);
    const noParagraph = `${para}\n${line}. ${'d'.repeat(30)}`;
    expect(splitText(noParagraph, 100)[0]).toBe(para);
    const noLine = `${para}. ${line}. ${'d'.repeat(30)} e f`;
    expect(splitText(noLine, 100)[0]).toBe(`${para}. ${line}.`);
  });

  it('ends a part at CJK sentence punctuation without a following space', () => {
    const text = `${'中'.repeat(20)}。${'文'.repeat(20)}`;
    expect(splitText(text, 90)).toEqual([`${'中'.repeat(20)}。`, '文'.repeat(20)]);
  });

  it('falls back to spaces, then to anywhere', () => {
    expect(splitText('alpha beta gamma delta', 12)).toEqual(['alpha beta', 'gamma delta']);
    expect(splitText('abcdefghij', 4)).toEqual(['abcd', 'efgh', 'ij']);
  });

  it('splits a 5000-byte CJK line without spaces on code points', () => {
    const text = '汉字かな'.repeat(417);
    expect(utf8Length(text)).toBe(5004);
    const parts = splitText(text);
    expect(parts.map(utf8Length)).toEqual([2046, 2046, 912]);
    expectFaithfulSplit(text, parts, 2048);
  });

  it('never splits an emoji or grapheme cluster', () => {
    const family = '👨‍👩‍👧‍👦'; // 25 bytes
    const text = family.repeat(200);
    const parts = splitText(text, 100);
    for (const part of parts) {
      expect(utf8Length(part)).toBeLessThanOrEqual(100);
      expect(part.replaceAll(family, '')).toBe('');
    }
    expect(parts.join('')).toBe(text);
    const thumbs = '👍🏽'.repeat(100);
    const odd = splitText(`x${thumbs}`, 23);
    for (const part of odd) expect(part.replace(/^x/, '').replaceAll('👍🏽', '')).toBe('');
  });

  it('splits inside a cluster only when one cluster exceeds the limit, and then on code points', () => {
    const flags = '🏴󠁧󠁢󠁳󠁣󠁴󠁿'; // one grapheme of 28 bytes
    const parts = splitText(flags, 8);
    expect(parts.join('')).toBe(flags);
    for (const part of parts) expect(decoder.decode(Buffer.from(part))).toBe(part);
  });

  it('refuses a limit below one code point', () => {
    expect(() => splitText('abc', 3)).toThrow(RangeError);
  });
});
