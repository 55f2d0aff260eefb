import { describe, expect, it } from 'vitest';
import {
  buildImageReplyXml,
  buildTextReplyXml,
  cdata,
  MAX_TEXT_BYTES,
  parseXml,
} from '../packages/core/src/wechat/index.js';
import { expectRejected } from './helpers/expect-rejected.js';

const TEXT_SAMPLE = `<xml>
  <ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>
  <FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>
  <CreateTime>1348831860</CreateTime>
  <MsgType><![CDATA[text]]></MsgType>
  <Content><![CDATA[this is a test]]></Content>
  <MsgId>24563473920512345678</MsgId>
</xml>`;

function expectBadRequest(xml: string, reason?: RegExp): void {
  expectRejected(() => parseXml(xml), 'bad_request', 400, reason);
}

describe('parseXml', () => {
  it('reads the direct children of <xml>, keeping ids as strings', () => {
    expect({ ...parseXml(TEXT_SAMPLE) }).toEqual({
      ToUserName: 'gh_7f083739789a',
      FromUserName: 'oia2TjuEGTNoeX76QEjQNrcURxG8',
      CreateTime: '1348831860',
      MsgType: 'text',
      Content: 'this is a test',
      MsgId: '24563473920512345678',
    });
  });

  it('keeps CDATA exactly, whitespace and newlines included', () => {
    const fields = parseXml('<xml><Content><![CDATA[  two\n lines  ]]></Content></xml>');
    expect(fields.Content).toBe('  two\n lines  ');
  });

  it('joins text and CDATA sections and decodes the predefined entities', () => {
    const fields = parseXml('<xml><A>a &amp; b &lt;c&gt; &#x4e2d;&#25991;</A><B><![CDATA[x]]>y<![CDATA[z]]></B></xml>');
    expect(fields.A).toBe('a & b <c> 中文');
    expect(fields.B).toBe('xyz');
  });

  it('keeps markup-looking text inside CDATA as text', () => {
    expect(parseXml('<xml><Content><![CDATA[<b>&amp;</b>]]></Content></xml>').Content).toBe('<b>&amp;</b>');
  });

  it('reads empty and self-closing elements as empty strings', () => {
    expect({ ...parseXml('<xml><EventKey></EventKey><Ticket/><Label><![CDATA[]]></Label></xml>') }).toEqual({
      EventKey: '',
      Ticket: '',
      Label: '',
    });
  });

  it('accepts an XML declaration, comments and attributes, and ignores the attributes', () => {
    const fields = parseXml('<?xml version="1.0" encoding="UTF-8"?>\n<!-- hi --><xml a="1"><B c="2">v</B></xml>\n');
    expect({ ...fields }).toEqual({ B: 'v' });
  });

  it('flattens nested leaves under their own names (menu scan events)', () => {
    const fields = parseXml(`<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Event><![CDATA[scancode_push]]></Event>
      <EventKey><![CDATA[6]]></EventKey>
      <ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType><ScanResult><![CDATA[1]]></ScanResult></ScanCodeInfo></xml>`);
    expect({ ...fields }).toEqual({
      ToUserName: 'gh_1',
      Event: 'scancode_push',
      EventKey: '6',
      ScanType: 'qrcode',
      ScanResult: '1',
    });
  });

  it('lets a direct child win a name clash and the first nested leaf win among nested ones', () => {
    const fields = parseXml(`<xml><SendPicsInfo><Count>2</Count><PicList>
      <item><PicMd5Sum><![CDATA[first]]></PicMd5Sum></item><item><PicMd5Sum><![CDATA[second]]></PicMd5Sum></item>
      </PicList></SendPicsInfo><Count>9</Count></xml>`);
    expect(fields.Count).toBe('9');
    expect(fields.PicMd5Sum).toBe('first');
    expect(fields.SendPicsInfo).toBeUndefined();
  });

  it('treats names like __proto__ as plain keys', () => {
    const fields = parseXml('<xml><__proto__>x</__proto__><constructor>y</constructor></xml>');
    expect(Object.getPrototypeOf(fields)).toBeNull();
    expect(Object.keys(fields)).toEqual(['__proto__', 'constructor']);
    expect(fields.constructor).toBe('y');
  });

  it('refuses a DOCTYPE even without entities', () => {
    expectBadRequest('<!DOCTYPE xml><xml><A>1</A></xml>', /DOCTYPE/);
  });

  it('refuses the billion laughs', () => {
    const lol = `<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol9 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<xml><Content>&lol9;</Content></xml>`;
    expectBadRequest(lol, /DOCTYPE/);
  });

  it('refuses an external SYSTEM entity', () => {
    const xxe = `<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>a</ToUserName><Content>&xxe;</Content></xml>`;
    expectBadRequest(xxe, /DOCTYPE/);
    expectBadRequest('<!DOCTYPE xml SYSTEM "http://example.com/evil.dtd"><xml><A>1</A></xml>', /DOCTYPE/);
  });

  it('never expands an undeclared or HTML entity', () => {
    expectBadRequest('<xml><Content>&xxe;</Content></xml>');
    expectBadRequest('<xml><Content>&nbsp;</Content></xml>');
  });

  it('refuses malformed XML', () => {
    expectBadRequest('<xml><ToUserName>a</ToUserName>');
    expectBadRequest('<xml><ToUserName>a</xml>');
    expectBadRequest('<xml><A>1</B></xml>');
    expectBadRequest('<xml><A>1</A></xml><xml></xml>');
    expectBadRequest('junk<xml></xml>');
    expectBadRequest('<xml></xml>junk');
    expectBadRequest('<xml><A b=1>x</A></xml>');
    expectBadRequest('{"ToUserName":"a"}');
  });

  it('refuses an empty body and a root other than <xml>', () => {
    expectBadRequest('', /root/);
    expectBadRequest('  \n', /root/);
    expectBadRequest('<root><A>1</A></root>', /root/);
    expectBadRequest('<XML><A>1</A></XML>', /root/);
  });

  it('accepts text of exactly the limit and refuses one byte more', () => {
    expect(parseXml(`<xml><A>${'x'.repeat(MAX_TEXT_BYTES)}</A></xml>`).A).toHaveLength(MAX_TEXT_BYTES);
    expectBadRequest(`<xml><A>${'x'.repeat(MAX_TEXT_BYTES + 1)}</A></xml>`, /exceeds/);
  });

  it('counts the limit in UTF-8 bytes, across text and CDATA sections', () => {
    expectBadRequest(`<xml><A>${'中'.repeat(22_000)}</A></xml>`, /exceeds/);
    const half = 'y'.repeat(MAX_TEXT_BYTES / 2);
    expectBadRequest(`<xml><A><![CDATA[${half}]]>${half}<![CDATA[!]]></A></xml>`, /exceeds/);
  });
});

describe('cdata', () => {
  it('wraps text in a CDATA section', () => {
    expect(cdata('a<b>&c')).toBe('<![CDATA[a<b>&c]]>');
  });

  it('splits ]]> across two sections so the text survives a parse', () => {
    expect(cdata('a]]>b')).toBe('<![CDATA[a]]]]><![CDATA[>b]]>');
    for (const text of [']]>', 'x]]>]]>y', ']]]]>>', '<![CDATA[nested]]>', ']]', '>']) {
      expect(parseXml(`<xml><Content>${cdata(text)}</Content></xml>`).Content).toBe(text);
    }
  });

  it('drops characters that XML forbids, keeping emoji and CJK', () => {
    expect(cdata('a\u0000b\u0008c\uFFFEd\uD800e 😀 中\t\n')).toBe('<![CDATA[abcde 😀 中\t\n]]>');
  });
});

describe('reply builders', () => {
  it('builds a text reply that parses back to the same fields', () => {
    const xml = buildTextReplyXml({ toUser: 'oUser', fromUser: 'gh_1', content: 'Hi ]]> 你好 🎉', createTime: 1700000000 });
    expect(xml).toBe(
      '<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh_1]]></FromUserName>' +
        '<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>' +
        '<Content><![CDATA[Hi ]]]]><![CDATA[> 你好 🎉]]></Content></xml>',
    );
    expect({ ...parseXml(xml) }).toEqual({
      ToUserName: 'oUser',
      FromUserName: 'gh_1',
      CreateTime: '1700000000',
      MsgType: 'text',
      Content: 'Hi ]]> 你好 🎉',
    });
  });

  it('stamps the current time when none is given', () => {
    const now = Math.floor(Date.now() / 1000);
    const time = Number(parseXml(buildTextReplyXml({ toUser: 'u', fromUser: 'g', content: 'x' })).CreateTime);
    expect(time).toBeGreaterThanOrEqual(now);
    expect(time).toBeLessThanOrEqual(now + 2);
  });

  it('builds an image reply with the media id nested in <Image>', () => {
    const xml = buildImageReplyXml({ toUser: 'oUser', fromUser: 'gh_1', mediaId: 'MEDIA_1', createTime: 1 });
    expect(xml).toContain('<MsgType><![CDATA[image]]></MsgType><Image><MediaId><![CDATA[MEDIA_1]]></MediaId></Image>');
    expect(parseXml(xml).MediaId).toBe('MEDIA_1');
  });
});
