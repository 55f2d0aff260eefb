import { defineScript, redisKey, type RedisClient } from './redis.js';

/** Conversation ids are kept 30 days after their last use. */
const CONVERSATION_TTL_S = 30 * 24 * 3600;

// Saves the id only if no `/clear` happened since the job read the conversation (same generation),
// so an answer still streaming when the follower clears cannot bring the old conversation back.
const SAVE_LUA = `
local gen = redis.call('HGET', KEYS[1], 'gen') or '0'
if gen ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'gen', gen)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
`;

/** A follower's Dify conversation as read at the start of a job. */
export interface ConversationRef {
  id: string | undefined;
  generation: string;
}

/** The hash of a follower's conversation: `id` (Dify's) and `gen` (bumped by every `/clear`). */
export function conversationKey(prefix: string, account: string, openId: string): string {
  return redisKey(prefix, 'conv', account, openId);
}

/** Dify conversation ids per (account, follower), in Redis so they survive every restart. */
export class ConversationStore {
  readonly #redis: RedisClient;
  readonly #prefix: string;
  readonly #save;

  constructor(redis: RedisClient, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#save = defineScript<[string, string, string, number], number>(redis, 'wxdSaveConversation', 1, SAVE_LUA);
  }

  #key(account: string, openId: string): string {
    return conversationKey(this.#prefix, account, openId);
  }

  /** The current conversation id (if any) and its generation. */
  async get(account: string, openId: string): Promise<ConversationRef> {
    const [id, gen] = await this.#redis.hmget(this.#key(account, openId), 'id', 'gen');
    return { id: id ?? undefined, generation: gen ?? '0' };
  }

  /** Saves `id` unless the follower cleared the conversation since `ref` was read. */
  async save(account: string, openId: string, ref: ConversationRef, id: string): Promise<boolean> {
    return (await this.#save(this.#key(account, openId), ref.generation, id, CONVERSATION_TTL_S)) === 1;
  }

  /** Forgets the conversation (`/clear`, or Dify no longer knows it): the next message starts a new one. */
  async clear(account: string, openId: string): Promise<void> {
    const key = this.#key(account, openId);
    await this.#redis.multi().hincrby(key, 'gen', 1).hdel(key, 'id').expire(key, CONVERSATION_TTL_S).exec();
  }
}
