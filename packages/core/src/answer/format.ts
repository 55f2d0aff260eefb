import { lexer } from 'marked';
import type { Token, Tokens } from 'marked';

/** An answer ready for WeChat: plain text (with `<a>` links) and the images cut out of it. */
export interface ShapedAnswer {
  text: string;
  /** Absolute where `difyOrigin` allowed, in order of appearance, without duplicates. */
  images: string[];
}

export interface FormatOptions {
  /** Dify's origin (base URL without `/v1`), for the relative `/files/...` URLs of self-hosted Dify. */
  difyOrigin?: string | undefined;
}

/**
 * Reasoning models leak their thinking into `answer` (dify-api.md §7 item 9, Dify #14303,
 * #14594, #14762): as `<think>…</think>`, as a bare `…</think>` whose opening tag was eaten,
 * or wrapped by Dify in `<details …> <summary> Thinking... </summary>…</details>`.
 */
const THINK_BLOCK = /<think\b[^>]*>[\s\S]*?<\/think\s*>/gi;
const UNOPENED_THINK = /^[\s\S]*?<\/think\s*>/i;
const UNCLOSED_LEADING_THINK = /^\s*<think\b[^>]*>(?![\s\S]*<\/think\s*>)[\s\S]*$/i;
const THINKING_DETAILS =
  /<details\b[^>]*>\s*<summary\b[^>]*>\s*Think[^<]*<\/summary>[\s\S]*?<\/details\s*>/gi;

/** Removes the model's reasoning from an answer, leaving only what the follower should read. */
export function stripReasoning(text: string): string {
  return text
    .replace(THINKING_DETAILS, '')
    .replace(THINK_BLOCK, '')
    .replace(UNOPENED_THINK, '')
    .replace(UNCLOSED_LEADING_THINK, '')
    .trim();
}

/**
 * WeChat text messages show plain text and `<a href>` links only, so markdown is flattened
 * to its text and images are returned separately (to be sent as image messages).
 */
export function markdownToWeChat(text: string, options: FormatOptions = {}): ShapedAnswer {
  const images: string[] = [];
  const context: RenderContext = {
    resolve: (url) => resolveUrl(url, options.difyOrigin),
    addImage: (url) => {
      if (!images.includes(url)) images.push(url);
    },
  };
  const rendered = renderBlocks(lexer(text.replaceAll(IMAGE_HOLE, '')), context, '\n\n');
  return { text: tidy(rendered), images };
}

/** The whole treatment of a raw Dify answer: reasoning stripped, markdown flattened. */
export function shapeAnswer(raw: string, options: FormatOptions = {}): ShapedAnswer {
  return markdownToWeChat(stripReasoning(raw), options);
}

/** Marks where an image was cut out, so the spaces around it can be merged afterwards. */
const IMAGE_HOLE = '\u0000';

interface RenderContext {
  resolve(url: string): string;
  addImage(url: string): void;
}

function renderBlocks(tokens: readonly Token[], context: RenderContext, separator: string): string {
  return tokens
    .map((token) => renderBlock(token as Tokens.Generic, context))
    .filter((block) => block.replaceAll(IMAGE_HOLE, '').trim() !== '')
    .join(separator);
}

function renderBlock(token: Tokens.Generic, context: RenderContext): string {
  switch (token.type) {
    case 'space':
    case 'def':
      return '';
    case 'hr':
      return '---';
    case 'code':
      return (token as Tokens.Code).text;
    case 'html':
      return (token as Tokens.HTML).text.trim();
    case 'heading':
    case 'paragraph':
      return renderInline(token.tokens ?? [], context);
    case 'text':
      return token.tokens ? renderInline(token.tokens, context) : String(token.text ?? '');
    case 'blockquote':
      return prefixLines(renderBlocks(token.tokens ?? [], context, '\n\n'), '> ', '> ');
    case 'list':
      return renderList(token as Tokens.List, context);
    case 'table':
      return renderTable(token as Tokens.Table, context);
    default:
      return token.tokens ? renderInline(token.tokens, context) : String(token.raw ?? '');
  }
}

/** Items as `- ` or `1. ` lines; continuation and nested lists indented under the marker. */
function renderList(list: Tokens.List, context: RenderContext): string {
  const start = typeof list.start === 'number' ? list.start : 1;
  const items = list.items.map((item, i) => {
    const marker = list.ordered ? `${start + i}. ` : '- ';
    const checkbox = item.task ? (item.checked ? '[x] ' : '[ ] ') : '';
    const body = renderBlocks(
      item.tokens.filter((token) => token.type !== 'checkbox'),
      context,
      item.loose ? '\n\n' : '\n',
    );
    return prefixLines(checkbox + body, marker, ' '.repeat(marker.length));
  });
  return items.join(list.loose ? '\n\n' : '\n');
}

function renderTable(table: Tokens.Table, context: RenderContext): string {
  const row = (cells: readonly Tokens.TableCell[]): string =>
    cells.map((cell) => renderInline(cell.tokens, context).trim()).join(' | ');
  return [row(table.header), ...table.rows.map(row)].join('\n');
}

function renderInline(tokens: readonly Token[], context: RenderContext): string {
  return tokens.map((token) => renderInlineToken(token as Tokens.Generic, context)).join('');
}

function renderInlineToken(token: Tokens.Generic, context: RenderContext): string {
  switch (token.type) {
    case 'br':
      return '\n';
    case 'checkbox':
      return '';
    case 'image':
      context.addImage(context.resolve((token as Tokens.Image).href));
      return IMAGE_HOLE;
    case 'link':
      return renderLink(token as Tokens.Link, context);
    case 'codespan':
    case 'escape':
    case 'html':
      return String(token.text);
    default:
      return token.tokens ? renderInline(token.tokens, context) : String(token.text ?? token.raw);
  }
}

/** WeChat renders `<a href>` in text messages; bare URLs it links by itself, so they stay as written. */
function renderLink(link: Tokens.Link, context: RenderContext): string {
  const label = renderInline(link.tokens, context).trim();
  if (link.autolink === true) return link.text;
  const href = context.resolve(link.href);
  if (label === '' || label === link.href) return href;
  return `<a href="${href.replaceAll('"', '%22')}">${label}</a>`;
}

/** Absolute URLs as they are; relative ones against Dify's origin when known. */
function resolveUrl(url: string, origin: string | undefined): string {
  if (origin === undefined || /^[a-z][a-z\d+.-]*:/i.test(url)) return url;
  try {
    return new URL(url, origin).href;
  } catch {
    return url;
  }
}

function prefixLines(text: string, first: string, rest: string): string {
  return text
    .split('\n')
    .map((line, i) => (line === '' ? line : (i === 0 ? first : rest) + line))
    .join('\n');
}

/** Image holes closed, trailing spaces dropped, and runs of blank lines collapsed to one. */
function tidy(text: string): string {
  return text
    .replace(/^[ \t]*(?:\0[ \t]*)+/gm, '')
    .replace(/[ \t]*(?:\0[ \t]*)+/g, ' ')
    .replace(/[ \t]+$/gm, '')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}
