import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { messageJobId, parseInboundMessage, type InboundMessage } from '../packages/core/src/index.js';
import { uniquePrefix } from './helpers/prefix.js';

// The idempotency key of DESIGN.md invariant 1, used as the BullMQ job id.
const text = (from: string, msgId: string, to = 'gh_account'): InboundMessage =>
  parseInboundMessage({ ToUserName: to, FromUserName: from, CreateTime: '1700000000', MsgType: 'text', Content: 'hi', MsgId: msgId });
const event = (from: string, fields: Record<string, string>): InboundMessage =>
  parseInboundMessage({ ToUserName: 'gh_account', FromUserName: from, CreateTime: '1700000000', MsgType: 'event', ...fields });

describe('messageJobId', () => {
  it('is the same for every retry of a message, and differs by account and by follower for the same MsgId', () => {
    const id = messageJobId('shop', text('o_a', '24563473920512345678'));
    expect(messageJobId('shop', text('o_a', '24563473920512345678'))).toBe(id);
    expect(messageJobId('news', text('o_a', '24563473920512345678'))).not.toBe(id);
    expect(messageJobId('shop', text('o_b', '24563473920512345678'))).not.toBe(id);
    expect(messageJobId('shop', text('o_a', '24563473920512345679'))).not.toBe(id);
  });

  it('keys events by follower, CreateTime, Event and EventKey', () => {
    const click = event('o_a', { Event: 'CLICK', EventKey: 'MENU_1' });
    expect(messageJobId('shop', click)).toBe(messageJobId('shop', event('o_a', { Event: 'CLICK', EventKey: 'MENU_1' })));
    expect(messageJobId('shop', click)).not.toBe(messageJobId('shop', event('o_a', { Event: 'CLICK', EventKey: 'MENU_2' })));
    expect(messageJobId('shop', click)).not.toBe(messageJobId('shop', event('o_b', { Event: 'CLICK', EventKey: 'MENU_1' })));
    expect(messageJobId('shop', click)).not.toBe(messageJobId('shop', event('o_a', { Event: 'VIEW', EventKey: 'MENU_1' })));
  });

  describe('as a BullMQ job id', () => {
    let redis: Redis;
    let queue: Queue;
    beforeAll(() => {
      redis = new Redis(inject('redisUrl'), { maxRetriesPerRequest: null });
      queue = new Queue('answer', { connection: redis, prefix: uniquePrefix() });
    });
    afterAll(async () => {
      await queue.close();
      await redis.quit();
    });

    it('is accepted for every valid message, even with `:` or integers where WeChat allows free text', async () => {
      const ids = [
        messageJobId('shop', text('oia2Tj-uEGTNoeX76_QEjQNrcURxG8', '1')),
        messageJobId('shop', event('o_a', { Event: 'SCAN', EventKey: 'qrscene_a:b', Ticket: 't' })),
        messageJobId('shop', event('o_a', { Event: 'custom:event' })),
        messageJobId('shop', event('o_a', { Event: 'CLICK', EventKey: '123' })),
      ];
      for (const jobId of ids) {
        const job = await queue.add('answer', {}, { jobId });
        expect(job.id).toBe(jobId);
      }
      // A second add with the same id attaches to the first job instead of making another.
      await queue.add('answer', {}, { jobId: ids[0]! });
      expect(await queue.getJobCountByTypes('wait')).toBe(ids.length);
    });
  });
});
