import { describe, expect, it } from 'vitest';
import { markdownToWeChat, shapeAnswer, stripReasoning } from '../packages/core/src/answer/index.js';

const ORIGIN = 'https://dify.example.com';

describe('stripReasoning', () => {
  it('removes <think> blocks, multiline and several', () => {
    const raw = '<think>\nfirst\nthoughts\n</think>\n\nHello <think>more</think>world';
    expect(stripReasoning(raw)).toBe('Hello world');
  });

  it('removes everything before a lone </think>', () => {
    expect(stripReasoning('the model thinks\nout loud\n</think>\n\nThe answer.')).toBe('The answer.');
  });

  it('removes an unclosed leading <think> (a cut stream)', () => {
    expect(stripReasoning('<think>\nstill thinking')).toBe('');
  });

  it("removes Dify's Thinking details wrapper", () => {
    const raw =
      '<details style="color:gray;background-color: #f8f8f8;padding: 8px;border-radius: 4px;" open> ' +
      '<summary> Thinking... </summary>Let me\nconsider this.\n</details>\n\nThe answer is 42.';
    expect(stripReasoning(raw)).toBe('The answer is 42.');
  });

  it('keeps other details blocks and plain text', () => {
    const raw = '<details><summary>Spoiler</summary>hidden</details>\nText with a < b > c';
    expect(stripReasoning(raw)).toBe(raw);
  });
});

describe('markdownToWeChat', () => {
  const plain = (md: string): string => markdownToWeChat(md).text;

  it('puts headings on their own line as text', () => {
    expect(plain('# Title\nBody text')).toBe('Title\n\nBody text');
    expect(plain('## Sub **bold**\n\nx')).toBe('Sub bold\n\nx');
  });

  it('drops emphasis, strong, strikethrough and inline code markup', () => {
    expect(plain('*a* **b** ***c*** _d_ ~~e~~ `f(x) < 1`')).toBe('a b c d e f(x) < 1');
  });

  it('turns lists into plain lines, nested ones indented', () => {
    const md = '- one\n- two\n  - inner\n  - inner2\n- [x] done\n- [ ] todo\n\n3. three\n4. four\n   1. sub';
    expect(plain(md)).toBe(
      '- one\n- two\n  - inner\n  - inner2\n- [x] done\n- [ ] todo\n\n3. three\n4. four\n   1. sub',
    );
  });

  it('keeps code blocks as their code', () => {
    expect(plain('Run:\n\n```bash\nnpm test\n  --watch\n```\n\nDone.')).toBe('Run:\n\nnpm test\n  --watch\n\nDone.');
  });

  it('prefixes blockquote lines with "> "', () => {
    expect(plain('> quoted\n> line\n\nafter')).toBe('> quoted\n> line\n\nafter');
  });

  it('writes table rows as "a | b" lines', () => {
    expect(plain('| Name | Age |\n|------|----:|\n| **Ann** | 3 |\n| Bob | 4 |')).toBe(
      'Name | Age\nAnn | 3\nBob | 4',
    );
  });

  it('turns links into <a href> and keeps bare URLs as written', () => {
    expect(plain('See [the docs](https://e.x/d?a=1&b=2) or https://e.x/raw and www.e.x.')).toBe(
      'See <a href="https://e.x/d?a=1&b=2">the docs</a> or https://e.x/raw and www.e.x.',
    );
    expect(plain('<https://e.x/auto>')).toBe('https://e.x/auto');
  });

  it('resolves relative file links against the Dify origin', () => {
    const { text } = markdownToWeChat('[x.bin](/files/tools/1.bin?sign=a)', { difyOrigin: ORIGIN });
    expect(text).toBe(`<a href="${ORIGIN}/files/tools/1.bin?sign=a">x.bin</a>`);
  });

  it('removes images from the text and returns them, resolved and deduplicated', () => {
    const md =
      'Here it is:\n\n![cat](/files/tools/abc.png?timestamp=1&sign=x)\n\n' +
      'and ![dog](https://cdn.e.x/dog.jpg) too. ![cat](/files/tools/abc.png?timestamp=1&sign=x)';
    expect(markdownToWeChat(md, { difyOrigin: ORIGIN })).toEqual({
      text: 'Here it is:\n\nand too.',
      images: [`${ORIGIN}/files/tools/abc.png?timestamp=1&sign=x`, 'https://cdn.e.x/dog.jpg'],
    });
  });

  it('closes the gap an image leaves, and drops lines left empty', () => {
    expect(plain('![a](https://e.x/a.png) caption\n\n- ![b](https://e.x/b.png)\n- item')).toBe('caption\n\n- item');
  });

  it('leaves relative image URLs as they are without an origin', () => {
    expect(markdownToWeChat('![a](/files/x.png)').images).toEqual(['/files/x.png']);
  });

  it('keeps < and > that were in the text', () => {
    expect(plain('if a < b and c > d then <none>')).toBe('if a < b and c > d then <none>');
    expect(plain('1 &lt; 2 \\*not emphasis\\*')).toBe('1 &lt; 2 *not emphasis*');
  });

  it('keeps line breaks and collapses runs of blank lines', () => {
    expect(plain('a\nb\n\n\n\n\nc')).toBe('a\nb\n\nc');
    expect(plain('```\nx\n\n\n\ny\n```')).toBe('x\n\ny');
  });
});

describe('shapeAnswer', () => {
  it('strips reasoning, then flattens markdown', () => {
    const raw = '<think>plan the reply</think>\n\n## Answer\n\n**Yes.** ![chart](/files/c.png)\n\n';
    expect(shapeAnswer(raw, { difyOrigin: ORIGIN })).toEqual({
      text: 'Answer\n\nYes.',
      images: [`${ORIGIN}/files/c.png`],
    });
  });

  it('returns empty text when the answer was only reasoning', () => {
    expect(shapeAnswer('<think>x</think>')).toEqual({ text: '', images: [] });
  });
});
