import { createRequire } from 'node:module';

/** node-webot's wechat-crypto: an independent implementation of WeChat's envelope (CJS, untyped), used as the reference. */
export interface WXBizMsgCrypt {
  encrypt(text: string): string;
  decrypt(text: string): { message: string; id: string };
  getSignature(timestamp: string, nonce: string, encrypt: string): string;
}

export const WXBizMsgCrypt = createRequire(import.meta.url)('wechat-crypto') as new (
  token: string,
  encodingAESKey: string,
  id: string,
) => WXBizMsgCrypt;

/** WeChat's official sample account. */
export const SAMPLE = { token: 'pamtest', key: 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG', appId: 'wxb11529c136998cb6' } as const;
