// The Lua scripts of the delivery state machine (see DeliveryStore, which runs them): every
// transition of a message's delivery state happens inside one of them, so the ingress and the
// workers never race on it (DESIGN 2).

// Redis's clock in ms, for the scripts that compare it with a deadline (one clock for every
// replica); read only when called.
const NOW_MS_LUA = `
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`;

// KEYS: message hash, the follower's line (sorted set), the follower's push allowance, the
//       follower's conversation (hash: id, gen).
// ARGV: now, ttl, job id, allowance ('' keeps it), '1' when the message goes to Dify (takes a place in line),
//       how long the allowance lasts (s), then one deadline (ms epoch) per attempt that may be
//       granted its answer by the worker (ARGV[6 + n] for attempt n; none for the last attempt).
// A follower message's first arrival opens a fresh push allowance (WeChat's retries of it do not:
// pushes of an earlier answer may have used some since) and fixes its place in line.
// The place (`ord`) comes from Redis's one clock, not from each replica's: replicas' clocks drift,
// and a message sent later must not overtake one sent earlier. `first` (this replica's clock, for
// the deadlines measured from it) is kept as it is. ms with a microsecond fraction, so a burst in
// one millisecond still keeps its order.
// Whether the answer is stored already: then the message's job is done (and may be gone from
// BullMQ, whose retention is bounded), so it must not be added again.
// A message for Dify that heads its follower's line now keeps heading it until its answer is
// stored (a later arrival never goes before it): the reply says so, with the conversation as it
// stands, and the job carries both, so the worker starts it without looking at the line again.
export const ATTEMPT_LUA = `
local n = redis.call('HINCRBY', KEYS[1], 'att', 1)
if n == 1 then
  local t = redis.call('TIME')
  redis.call('HSETNX', KEYS[1], 'first', ARGV[1])
  redis.call('HSETNX', KEYS[1], 'ord', string.format('%.3f', tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000))
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'first', 'state', 'ord')
local first, st = h[1], h[2] or ''
local head, conv = 0, {}
local answered = redis.call('HEXISTS', KEYS[1], 'ans')
if ARGV[5] == '1' and st == '' and answered == 0 then
  redis.call('ZADD', KEYS[2], 'NX', h[3], ARGV[3])
  redis.call('EXPIRE', KEYS[2], 86400)
  if redis.call('ZRANGE', KEYS[2], 0, 0)[1] == ARGV[3] then
    head = 1
    conv = redis.call('HMGET', KEYS[4], 'id', 'gen')
  end
end
if ARGV[4] ~= '' and n == 1 then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[6]) end
-- Until when this attempt waits for the answer: the worker that stores it by then hands it to
-- this attempt at once (FINISH_LUA). The last attempt takes or hands over itself (SETTLE_LUA).
if ARGV[5] == '1' and st == '' and ARGV[6 + n] then
  redis.call('HSET', KEYS[1], 'grant', ARGV[6 + n])
else
  redis.call('HDEL', KEYS[1], 'grant')
end
return {n, first, st, head, conv[1] or '', conv[2] or '0', answered}
`;

// take:    an attempt is open; take the answer if it exists.
// last:    the last attempt's deadline; take the answer, or hand over to ARGV[2] (push|wait).
// handoff: WeChat's window is over, or the request is gone; hand over to ARGV[2].
// fetch:   the follower sent `1`; take the answer if it exists and is not delivered yet.
// reclaim: a passive take or fetch whose reply could not leave (WeChat hung up, or the route's
//          hard cap answered first): hand the answer over to ARGV[2] after all.
// KEYS: message hash, the due set of answers no attempt took yet (see FINISH_LUA), the follower's
//       pending set (answers a `1` fetches, by place in line).
// ARGV: mode, hand-over state (push|wait), job id, notAfter (ms epoch, '' for none), ttl, ms a
//       push hand-over keeps its due entry.
// notAfter bounds a passive take by Redis's clock: past it the reply could not reach WeChat in
// time (a slow Redis, a long GC), so take/fetch take nothing and `last` hands over instead.
// A hand-over to `wait` enters the pending set in the same step, so no crash can lose it. One to
// `push` of an answer that exists keeps (re-scores) its due entry: the caller enqueues the push
// job, then drops the entry; if it dies in between, a sweep finds the entry and enqueues it again
// (push job ids are idempotent).
export const SETTLE_LUA = `
local h = redis.call('HMGET', KEYS[1], 'state', 'ans')
local st, ans = h[1] or '', h[2]
local mode = ARGV[1]
${NOW_MS_LUA}
local late = ARGV[4] ~= '' and now() > tonumber(ARGV[4])
-- The answer goes out now, its first part (index 0) with it.
local function move(to)
  redis.call('HSET', KEYS[1], 'state', to, 'next', 1)
  redis.call('ZREM', KEYS[2], ARGV[3])
end
local function handover(to)
  redis.call('HSET', KEYS[1], 'state', to)
  if to == 'wait' then
    local o = redis.call('HMGET', KEYS[1], 'ord', 'first')
    redis.call('ZADD', KEYS[3], o[1] or o[2] or now(), ARGV[3])
    redis.call('EXPIRE', KEYS[3], ARGV[5])
    redis.call('ZREM', KEYS[2], ARGV[3])
  elseif ans then
    redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[6]), ARGV[3])
  end
  return {to, ans or '', 1}
end
if mode == 'reclaim' then
  if st == 'passive' or st == 'fetched' then
    redis.call('HDEL', KEYS[1], 'next')
    return handover(ARGV[2])
  end
  return {st, ans or '', 0}
end
if st == '' then
  if ans and (mode == 'take' or mode == 'last') and not late then
    move('passive')
    return {'passive', ans, 1}
  end
  if ans and mode == 'fetch' and not late then
    move('fetched')
    return {'fetched', ans, 1}
  end
  if mode == 'last' or mode == 'handoff' then return handover(ARGV[2]) end
  return {'', '', 0}
end
if st == 'wait' and ans and mode == 'fetch' and not late then
  move('fetched')
  return {'fetched', ans, 1}
end
return {st, ans or '', 0}
`;

// The one way a part is handed out, by the push job and by the follower's `1` alike: claims the
// next undelivered part (the claimer then sends it) and moves `next` on, atomically, so `next`
// only moves forward and no part is handed out twice. Nothing is handed out before the first part
// went out (state '' or wait). Returns index, part, how many remain after it.
export const CLAIM_PART_LUA = `
local h = redis.call('HMGET', KEYS[1], 'ans', 'state', 'next')
local ans, st = h[1], h[2] or ''
if not ans or st == '' or st == 'wait' then return {-1, '', 0} end
local parts = cjson.decode(ans)['parts']
local n = tonumber(h[3] or '0')
if n >= #parts then return {-1, '', 0} end
redis.call('HSET', KEYS[1], 'next', n + 1)
return {n, cjson.encode(parts[n + 1]), #parts - n - 1}
`;

// Gives back a claimed part WeChat definitely did not receive, only while nothing after it was
// claimed (ARGV[1] is its index): a later part already handed out is never handed out again.
export const GIVE_BACK_PART_LUA = `
if tonumber(redis.call('HGET', KEYS[1], 'next') or '-1') ~= tonumber(ARGV[1]) + 1 then return 0 end
redis.call('HSET', KEYS[1], 'next', ARGV[1])
return 1
`;

// Uses one push of the follower's allowance; -1 when there is none. An allowance that expired is
// not brought back as a key without a TTL (a bare DECR would create one).
export const USE_PUSH_LUA = `
if not redis.call('GET', KEYS[1]) then return -1 end
return redis.call('DECR', KEYS[1])
`;

// Gives back one push of the follower's allowance (a push that failed), never above ARGV[1].
export const GIVE_BACK_PUSH_LUA = `
local left = tonumber(redis.call('GET', KEYS[1]) or '-1')
if left < 0 or left >= tonumber(ARGV[1]) then return left end
return redis.call('INCR', KEYS[1])
`;

// KEYS: message hash, the follower's line, the due set.
// ARGV: answer JSON, ttl, job id, account, OpenID, ms after the first arrival when WeChat's last
//       attempt must be over, now, the channel that wakes waiting attempts, the largest answer
//       (bytes) a wake-up carries.
// Stores the answer unless one is stored already (a rerun of the job never replaces an answer whose
// parts may be half delivered), ends the job's turn (returning the next job in line), and wakes
// the attempts that wait for it. An attempt that is waiting now (within its `grant` deadline, by
// Redis's clock) is granted the answer here: state passive, its first part going out, as its own
// `take` would have done; the wake-up carries the stored answer (when it is small enough), so that
// attempt replies without another round trip. Otherwise, while no attempt took or handed over the
// answer, it goes into the due set: a worker's sweep hands it over once WeChat's window is over.
export const FINISH_LUA = `
local stored = redis.call('HSETNX', KEYS[1], 'ans', ARGV[1])
redis.call('HSET', KEYS[1], 'acct', ARGV[4], 'uid', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'state', 'first', 'grant')
local st = h[1] or ''
local notice = ARGV[3]
${NOW_MS_LUA}
if st == '' then
  if h[3] and now() <= tonumber(h[3]) then
    st = 'passive'
    redis.call('HSET', KEYS[1], 'state', st, 'next', 1)
    local ans = stored == 1 and ARGV[1] or redis.call('HGET', KEYS[1], 'ans')
    if #ans <= tonumber(ARGV[9]) then notice = notice .. '\\n' .. ans end
  else
    redis.call('ZADD', KEYS[3], tonumber(h[2] or ARGV[7]) + tonumber(ARGV[6]), ARGV[3])
  end
end
redis.call('PUBLISH', ARGV[8], notice)
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
return {st, nxt or ''}
`;

// KEYS: message hashes (any number). For each: its state and 1 when an answer is stored, else 0.
// The ingress's safety poll: one call for every request waiting in a process, not one each.
export const PROGRESS_LUA = `
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = {redis.call('HGET', key, 'state') or '', redis.call('HEXISTS', key, 'ans')}
end
return out
`;
