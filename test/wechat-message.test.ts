import { describe, expect, it } from 'vitest';
import { RequestRejectedError } from '../packages/core/src/errors.js';
import { parseInboundMessage, parseXml, type InboundMessage } from '../packages/core/src/wechat/index.js';

// Samples shaped like WeChat's docs:
// https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Receiving_standard_messages.html
// https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Receiving_event_pushes.html
const HEAD =
  '<ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>' +
  '<CreateTime>1348831860</CreateTime>';
const COMMON = { toUserName: 'gh_7f083739789a', fromUserName: 'oia2TjuEGTNoeX76QEjQNrcURxG8', createTime: '1348831860' };

function parse(body: string): InboundMessage {
  return parseInboundMessage(parseXml(`<xml>${HEAD}${body}</xml>`));
}

function withoutRaw(message: InboundMessage): Omit<InboundMessage, 'raw'> {
  const { raw: _raw, ...rest } = message;
  return rest;
}

function expectMissing(fields: Record<string, string>, name: string): void {
  let caught: unknown;
  try {
    parseInboundMessage(fields);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(RequestRejectedError);
  expect(caught).toMatchObject({ code: 'bad_request', status: 400, message: `missing field ${name}` });
}

describe('parseInboundMessage: messages', () => {
  it('reads a text message, keeping a 64-bit MsgId exact', () => {
    const message = parse(
      '<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好 😀]]></Content><MsgId>24563473920512345678</MsgId>',
    );
    expect(withoutRaw(message)).toEqual({
      ...COMMON, kind: 'text', msgType: 'text', content: '你好 😀', msgId: '24563473920512345678',
    });
    expect(message.raw.Content).toBe('你好 😀');
  });

  it('reads an image message', () => {
    const message = parse(
      '<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://mmbiz.qpic.cn/a.jpg]]></PicUrl>' +
        '<MediaId><![CDATA[media_id_1]]></MediaId><MsgId>1234567890123456</MsgId><MsgDataId>xxxx</MsgDataId><Idx>1</Idx>',
    );
    expect(withoutRaw(message)).toEqual({
      ...COMMON, kind: 'image', msgType: 'image', picUrl: 'http://mmbiz.qpic.cn/a.jpg', mediaId: 'media_id_1', msgId: '1234567890123456',
    });
    expect(message.raw.MsgDataId).toBe('xxxx');
  });

  it('reads a voice message with and without Recognition', () => {
    const voice = '<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[m]]></MediaId><Format><![CDATA[amr]]></Format>';
    const recognised = parse(`${voice}<Recognition><![CDATA[腾讯微信团队]]></Recognition><MsgId>1</MsgId>`);
    expect(withoutRaw(recognised)).toEqual({
      ...COMMON, kind: 'voice', msgType: 'voice', mediaId: 'm', format: 'amr', recognition: '腾讯微信团队', msgId: '1',
    });
    const plain = parse(`${voice}<MsgId>2</MsgId>`);
    expect(plain.kind === 'voice' && 'recognition' in plain).toBe(false);
  });

  it('reads video and short-video messages', () => {
    for (const type of ['video', 'shortvideo'] as const) {
      const message = parse(
        `<MsgType><![CDATA[${type}]]></MsgType><MediaId><![CDATA[m]]></MediaId>` +
          '<ThumbMediaId><![CDATA[t]]></ThumbMediaId><MsgId>3</MsgId>',
      );
      expect(withoutRaw(message)).toEqual({ ...COMMON, kind: type, msgType: type, mediaId: 'm', thumbMediaId: 't', msgId: '3' });
    }
  });

  it('reads a location message, keeping coordinates as sent', () => {
    const message = parse(
      '<MsgType><![CDATA[location]]></MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y>' +
        '<Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>4</MsgId>',
    );
    expect(withoutRaw(message)).toEqual({
      ...COMMON, kind: 'location', msgType: 'location',
      locationX: '23.134521', locationY: '113.358803', scale: '20', label: '位置信息', msgId: '4',
    });
  });

  it('reads a link message', () => {
    const message = parse(
      '<MsgType><![CDATA[link]]></MsgType><Title><![CDATA[公众平台官网链接]]></Title>' +
        '<Description><![CDATA[公众平台官网链接]]></Description><Url><![CDATA[https://mp.weixin.qq.com]]></Url><MsgId>5</MsgId>',
    );
    expect(withoutRaw(message)).toEqual({
      ...COMMON, kind: 'link', msgType: 'link', title: '公众平台官网链接', description: '公众平台官网链接', url: 'https://mp.weixin.qq.com', msgId: '5',
    });
  });

  it('keeps an unknown message type as kind unknown', () => {
    const message = parse('<MsgType><![CDATA[miniprogrampage]]></MsgType><Title>t</Title><MsgId>6</MsgId>');
    expect(withoutRaw(message)).toEqual({ ...COMMON, kind: 'unknown', msgType: 'miniprogrampage', msgId: '6' });
    expect(message.raw.Title).toBe('t');
  });

  it('reads missing optional fields as empty strings', () => {
    const message = parse('<MsgType><![CDATA[image]]></MsgType><MsgId>7</MsgId>');
    expect(message).toMatchObject({ kind: 'image', picUrl: '', mediaId: '' });
  });
});

describe('parseInboundMessage: events', () => {
  const event = (name: string, rest = ''): InboundMessage =>
    parse(`<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[${name}]]></Event>${rest}`);

  it('reads subscribe and unsubscribe without optional fields', () => {
    expect(withoutRaw(event('subscribe'))).toEqual({ ...COMMON, kind: 'event', msgType: 'event', event: 'subscribe' });
    expect(withoutRaw(event('unsubscribe'))).toEqual({ ...COMMON, kind: 'event', msgType: 'event', event: 'unsubscribe' });
  });

  it('reads a subscribe through a QR code with its scene and ticket', () => {
    const message = event('subscribe', '<EventKey><![CDATA[qrscene_123123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>');
    expect(message).toMatchObject({ kind: 'event', event: 'subscribe', eventKey: 'qrscene_123123', ticket: 'TICKET' });
  });

  it('reads SCAN, LOCATION, CLICK and VIEW', () => {
    expect(event('SCAN', '<EventKey><![CDATA[SCENE_VALUE]]></EventKey><Ticket><![CDATA[T]]></Ticket>')).toMatchObject({
      event: 'SCAN', eventKey: 'SCENE_VALUE', ticket: 'T',
    });
    expect(
      withoutRaw(event('LOCATION', '<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>')),
    ).toEqual({
      ...COMMON, kind: 'event', msgType: 'event', event: 'LOCATION', latitude: '23.137466', longitude: '113.352425', precision: '119.385040',
    });
    expect(event('CLICK', '<EventKey><![CDATA[EVENTKEY]]></EventKey>')).toMatchObject({ event: 'CLICK', eventKey: 'EVENTKEY' });
    expect(event('VIEW', '<EventKey><![CDATA[www.qq.com]]></EventKey><MenuId>1</MenuId>')).toMatchObject({
      event: 'VIEW', eventKey: 'www.qq.com',
    });
  });

  it('keeps other events by name with their flattened nested fields in raw', () => {
    const message = event(
      'scancode_waitmsg',
      '<EventKey><![CDATA[6]]></EventKey><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType>' +
        '<ScanResult><![CDATA[2]]></ScanResult></ScanCodeInfo>',
    );
    expect(message).toMatchObject({ kind: 'event', event: 'scancode_waitmsg', eventKey: '6' });
    expect(message.raw.ScanResult).toBe('2');
  });

  it('keeps a MsgId when an event carries one', () => {
    expect(event('MASSSENDJOBFINISH', '<MsgId>1988</MsgId>')).toMatchObject({ msgId: '1988' });
    expect('msgId' in event('CLICK')).toBe(false);
  });
});

describe('parseInboundMessage: refusals', () => {
  const text = {
    ToUserName: 'gh_1', FromUserName: 'o1', CreateTime: '1', MsgType: 'text', Content: 'hi', MsgId: '9',
  };

  it.each(['ToUserName', 'FromUserName', 'CreateTime', 'MsgType', 'MsgId', 'Content'])('refuses a text message without %s', (name) => {
    const { [name as keyof typeof text]: _gone, ...rest } = text;
    expectMissing(rest, name);
    expectMissing({ ...text, [name]: '' }, name);
  });

  it('requires MsgId on every non-event message, unknown types included', () => {
    expectMissing({ ToUserName: 'g', FromUserName: 'o', CreateTime: '1', MsgType: 'image', PicUrl: 'u' }, 'MsgId');
    expectMissing({ ToUserName: 'g', FromUserName: 'o', CreateTime: '1', MsgType: 'whatever' }, 'MsgId');
  });

  // The ids become part of BullMQ job ids and Redis keys: BullMQ refuses `:` in a job id, after the attempt is recorded.
  it.each([
    ['FromUserName', 'a:b'],
    ['FromUserName', 'o user'],
    ['FromUserName', 'o/../x'],
    ['FromUserName', 'o中'],
    ['ToUserName', 'gh:1'],
    ['MsgId', '12a'],
    ['MsgId', '1:2'],
    ['MsgId', '-1'],
    ['CreateTime', '1700000000:1'],
  ])('refuses %s %j, which WeChat never sends', (name, value) => {
    let caught: unknown;
    try {
      parseInboundMessage({ ...text, [name]: value });
    } catch (err) {
      caught = err;
    }
    expect(caught).toMatchObject({ code: 'bad_request', status: 400, message: `invalid field ${name}` });
  });

  it('refuses an event from an id that is not WeChat\'s form', () => {
    const base = { ToUserName: 'g', FromUserName: 'a:b', CreateTime: '1', MsgType: 'event', Event: 'subscribe' };
    expect(() => parseInboundMessage(base)).toThrow('invalid field FromUserName');
  });

  it('accepts OpenIDs and original ids with `-` and `_`', () => {
    const message = parseInboundMessage({ ...text, FromUserName: 'oia2Tj-uEGTNoeX76_QEjQNrcURxG8', ToUserName: 'gh_7f083739789a' });
    expect(message).toMatchObject({ fromUserName: 'oia2Tj-uEGTNoeX76_QEjQNrcURxG8', toUserName: 'gh_7f083739789a' });
  });

  it('requires Event on events but not MsgId', () => {
    const base = { ToUserName: 'g', FromUserName: 'o', CreateTime: '1', MsgType: 'event' };
    expectMissing(base, 'Event');
    expect(parseInboundMessage({ ...base, Event: 'subscribe' }).kind).toBe('event');
  });
});
