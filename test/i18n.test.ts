import { describe, expect, it } from 'vitest';
import {
  LANGUAGES,
  MESSAGES,
  isLanguage,
  resolveMessages,
  t,
  type MessageKey,
} from '../packages/core/src/i18n/index.js';

const KEYS = Object.keys(MESSAGES.zh_Hans) as MessageKey[];

const PLACEHOLDERS: Partial<Record<MessageKey, string[]>> = {
  continueWaiting: ['left'],
  moreParts: ['count'],
  imageNote: ['url'],
  locationNote: ['label', 'x', 'y'],
  linkNote: ['title', 'description', 'url'],
};

function placeholdersOf(text: string): string[] {
  return [...text.matchAll(/\{(\w+)\}/g)].map((m) => m[1] ?? '').sort();
}

describe('message catalogue', () => {
  it('has every key in every language, none empty', () => {
    for (const lang of LANGUAGES) {
      expect(Object.keys(MESSAGES[lang]).sort()).toEqual([...KEYS].sort());
      for (const key of KEYS) expect(MESSAGES[lang][key].trim(), `${lang}.${key}`).not.toBe('');
    }
  });

  it('has the same placeholders in every language', () => {
    for (const lang of LANGUAGES) {
      for (const key of KEYS) {
        expect(placeholdersOf(MESSAGES[lang][key]), `${lang}.${key}`).toEqual(
          [...(PLACEHOLDERS[key] ?? [])].sort(),
        );
      }
    }
  });

  it('keeps the seed plugin wording for zh_Hans', () => {
    expect(t('zh_Hans', 'timeout')).toBe('内容生成耗时较长，请稍等...');
    expect(t('zh_Hans', 'continueWaiting', { left: 2 })).toContain('生成答复中，继续等待请回复1');
  });

  it('recognises only the four languages', () => {
    expect(LANGUAGES.every(isLanguage)).toBe(true);
    expect(isLanguage('en')).toBe(false);
    expect(isLanguage('zh_Hant')).toBe(false);
  });
});

describe('t', () => {
  it('fills every placeholder', () => {
    for (const lang of LANGUAGES) {
      expect(t(lang, 'continueWaiting', { left: 3 })).toContain('3');
      expect(t(lang, 'moreParts', { count: 4 })).toContain('4');
      const location = t(lang, 'locationNote', { label: 'Bund', x: 31.24, y: 121.49 });
      expect(location).toContain('Bund');
      expect(location).toContain('31.24');
      expect(location).toContain('121.49');
      const link = t(lang, 'linkNote', { title: 'T', description: 'D', url: 'https://e.x/a' });
      expect(link).toContain('https://e.x/a');
      expect(t(lang, 'imageNote', { url: 'https://e.x/i.png' })).toContain('https://e.x/i.png');
      for (const key of KEYS) {
        const args = { left: 1, count: 1, url: 'u', label: 'l', x: 1, y: 2, title: 't', description: 'd' };
        expect((t as (l: string, k: string, p: object) => string)(lang, key, args)).not.toMatch(/\{\w+\}/);
      }
    }
  });
});

describe('resolveMessages', () => {
  it('uses the catalogue when nothing is configured', () => {
    const tr = resolveMessages('en_US');
    expect(tr('timeout')).toBe(MESSAGES.en_US.timeout);
    expect(tr('continueWaiting', { left: 2 })).toBe(t('en_US', 'continueWaiting', { left: 2 }));
  });

  it('lets configured texts win', () => {
    const tr = resolveMessages('ja_JP', { timeoutMessage: 'wait', welcomeMessage: 'hello' });
    expect(tr('timeout')).toBe('wait');
    expect(tr('welcome')).toBe('hello');
    expect(tr('busy')).toBe(MESSAGES.ja_JP.busy);
  });

  it('substitutes {left} in a configured continue text', () => {
    const tr = resolveMessages('zh_Hans', { continueWaitingMessage: '请回复1继续等待，剩余{left}次' });
    expect(tr('continueWaiting', { left: 2 })).toBe('请回复1继续等待，剩余2次');
  });

  it('sends a configured continue text without {left} as it is', () => {
    const tr = resolveMessages('zh_Hans', { continueWaitingMessage: '生成答复中，继续等待请回复1' });
    expect(tr('continueWaiting', { left: 2 })).toBe('生成答复中，继续等待请回复1');
  });

  it('ignores blank configured texts', () => {
    const tr = resolveMessages('pt_BR', { timeoutMessage: '  ', continueWaitingMessage: undefined });
    expect(tr('timeout')).toBe(MESSAGES.pt_BR.timeout);
  });
});
