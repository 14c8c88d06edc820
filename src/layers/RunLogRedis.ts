/**
 * `RunLog` on Redis: one log shared by every agentwire instance on that Redis.
 *
 * **Keys** (all under `keyPrefix`, default `agentwire:`; one standalone Redis
 * or a primary, not a cluster: the scripts touch keys they compute):
 * - `run:<id>:s` — a Stream per run; entry id `<seq>-0`, fields `t` (type)
 *   and `f` (frame), so Redis itself refuses a duplicate or smaller id;
 * - `run:<id>` — a hash, the run's summary (user, thread, agent, status,
 *   started/ended, last seq, bytes, end time, last replay read `rd`);
 * - `user:<user>` — a sorted set of the user's runs by start order (`list`);
 * - `ended` — a sorted set of finished runs by end order, with `endinfo`
 *   (a hash run → user, bytes, last seq, end time, thread): retention and
 *   eviction take the oldest first; `bytes`, `runs`, `evicted` — counters;
 *   `ubytes` — a hash user → bytes (the user's share);
 * - `tombs` (sorted set by expiry) + `tombinfo` (hash run → user, last seq,
 *   thread): tombstones, counted and bounded like the in-memory ones;
 *   `utombs:<user>` (sorted set by expiry) finds a user's for an erase;
 * - `epoch` — set once with `SET NX`: stable across instances and restarts
 *   while Redis keeps its data; when Redis comes back empty a new one is made;
 * - `notes` — the Pub/Sub channel where an append publishes `<run_id> <seq>`
 *   when some instance waits on the run (`wait:<run_id>`, set by the waiting
 *   instance with a `WAIT_KEY_TTL_MS` expiry, renewed while it waits); a run's
 *   end is always published.
 *
 * **Atomicity and round trips.** Each operation is one Lua script (loaded
 * once, run with `EVALSHA` through `effect/persistence/Redis`): an append is
 * one round trip that checks the order, adds the entry, updates the summary,
 * the user's list, the counters, ends the run (`PEXPIRE` of its keys by
 * `retentionMs`), evicts under the user's share and the byte budget and
 * publishes the note. A periodic sweep (every `SWEEP_INTERVAL_MS`, by every
 * instance) turns expired runs into tombstones; reads check expiry
 * themselves. Times in the scripts are Redis's own (`TIME`), so instances agree.
 *
 * **As in memory:** a user past `maxBytesPerUser` loses their own oldest
 * finished runs first (then their run still over it is told `log_full`);
 * past `maxBytes` the oldest finished runs of anyone go. Neither eviction
 * takes the run whose append it is: a run that ended over the share (its
 * terminal events, or the end of a `LOG_FULL` run) stays resumable until
 * another run's events need the room. A finished run read
 * by a replay is kept `replayGraceMs` (30 s) past each read even when its
 * retention ends (its keys' expiry is pushed out), and both evictions take it
 * only after every other finished run. `eraseUser` / `eraseThread` remove
 * ended runs and their tombstones in one script: they answer
 * `RUN_NOT_FOUND` afterwards.
 *
 * **Waiting.** `waitFor` holds no connection: each instance keeps one
 * subscriber on `notes` and wakes its local waiters of that run; appends made
 * here wake them directly. A run's first local waiter sets `wait:<run_id>`
 * and looks at the run only once Redis has it, so every later append
 * publishes its note; without waiters an append publishes nothing (at two
 * instances that was two of every event's three Pub/Sub deliveries). A
 * reconnect sets the keys again and wakes every waiter (they read again, so
 * a note lost during the outage costs nothing).
 *
 * **Outage.** Commands fail at once while Redis is unreachable (no offline
 * queue); the client reconnects with backoff. Appends then go to a per-run
 * in-process buffer (at most `bufferEvents` events for all runs together) and
 * answer `ok` (or `event_limit` / `refused` past the run's caps, as Redis
 * would); they are flushed in order when Redis is back, so `seq` stays the
 * log position (a flush that repeats an append whose answer was lost is
 * recognised and skipped). Each run flushes on its own: an error reply that
 * may pass (`LOADING`, `BUSY`, `OOM`…) is retried on the next tick, at most
 * `FLUSH_ATTEMPTS` times in a row; one that will not (a key of the wrong
 * type, a script error) gives that run's log up at once — recorded as
 * expired, its next append answers `log_unavailable`, so the run ends — and
 * never holds up the other runs. An append answered so outside an outage
 * is treated the same way. An append that would overflow the buffer answers
 * `log_unavailable` (the run fails with `LOG_UNAVAILABLE`); that run's
 * buffered events are dropped and, once Redis is back, the run is recorded as
 * expired (`RUN_EXPIRED` with its last seq) rather than left with a gap. Reads
 * (`read`, `summary`, `list`) fail with `RunLogUnavailableError` while Redis is
 * down; `waitFor` keeps waiting and wakes when Redis is back. `stats.store`
 * tells whether Redis is up and how many events wait.
 *
 * If Redis comes back without its data, the epoch changes (`epoch` is read
 * from this object each time), and the runs it forgot answer `RUN_NOT_FOUND`;
 * a run still executing here records itself as expired at its next append.
 *
 * **Ownership and fencing** (with `instanceId`, as `AgentRuntime.layerRedis`
 * wires it): a run's first append records the appending instance as its owner
 * (`o` in `run:<id>`) and indexes the run in `instance:<owner>:runs` (run →
 * user) until it ends; an append or release from any other instance is
 * refused (`fenced`). When an instance's lease expires, `InstanceLeaseRedis`
 * on another instance moves the ownership of its open runs to itself and
 * closes them (`INSTANCE_LOST`): an instance that was only paused cannot add
 * to them afterwards. Its appends are answered `fenced` (not logged, not
 * delivered; later ones without a round trip), and its emitter stops the run
 * at once (`instance_lost`), freeing its slot and fiber.
 *
 * **Bytes** (of the budget and of each user's share) are counted as each
 * frame's UTF-8 length plus `REDIS_EVENT_OVERHEAD_BYTES` per event and
 * `REDIS_RUN_OVERHEAD_BYTES` per run: an estimate of what Redis holds (its
 * stream listpacks, hash and sorted-set entries vary with versions and
 * encodings), not a measure of its memory. The counters move with the events
 * in the same scripts, so they are exact in their own units across instances.
 *
 * @module
 */
import { NodeRedis } from "@effect/platform-node"
import { Cause, Deferred, Effect, Exit, Layer, Option, Redacted, Result, type Context } from "effect"
import { Redis } from "effect/persistence"
import { ErrorReply } from "redis"
import type { AgentEvent } from "../protocol/Protocol.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { RedisStartError, redisStartReason, redisTarget } from "../services/RedisStartError.ts"
import {
  AfterSeqError,
  type AppendResult,
  type ListOptions,
  type LoggedEvent,
  type LogPage,
  MAX_LIST_RUNS,
  MAX_LIST_SCAN,
  RunExpiredError,
  RunLog,
  type RunLogSettings,
  type RunLogStats,
  RunLogUnavailableError,
  RunNotFoundError,
  type RunStatus,
  type RunSummary
} from "../services/RunLog.ts"
import { generateId } from "../services/UserExecutionContext.ts"
import * as RedisInstance from "./RedisInstance.ts"
import { MAX_TOMBSTONES, REPLAY_GRACE_MS, SWEEP_INTERVAL_MS, terminalReserve } from "./RunLogMemory.ts"

/** Bytes counted per logged event beyond its frame (a stream entry's id, field names and listpack headers). */
export const REDIS_EVENT_OVERHEAD_BYTES = 32
/** Bytes counted per run beyond its events (summary hash, stream header, list and index entries). */
export const REDIS_RUN_OVERHEAD_BYTES = 1024
/** Default `AGENTWIRE_REDIS_BUFFER_EVENTS`: events all runs of an instance may buffer while Redis is unreachable. */
export const DEFAULT_BUFFER_EVENTS = 10_000
/** How often buffered events are retried, in milliseconds. */
const FLUSH_INTERVAL_MS = 100
/**
 * `stats` waits at most this long for Redis (milliseconds): a Redis that holds
 * the connection but does not answer (a stall, SIGSTOP) is reported down
 * (`store.up: false`) instead of holding `/ready` until it answers.
 */
export const STATS_TIMEOUT_MS = 1000
/** Refusals in a row that may pass (e.g. `LOADING`, `BUSY`, `OOM`) after which a run's buffered events are given up (about 5 s of flushes). */
const FLUSH_ATTEMPTS = 50
/** Runs remembered as fenced or failed at most (each is forgotten when its run is released). */
const MAX_REMEMBERED_RUNS = 10_000

/** Error replies that retrying may cure: Redis loading, busy with a script, out of memory, a replica, failing over. */
const TRANSIENT_REPLY = /^(LOADING|BUSY|TRYAGAIN|OOM|READONLY|MASTERDOWN|CLUSTERDOWN|NOREPLICAS|MISCONF)\b/

/** Redis answered, with an error retrying will not cure (a key of the wrong type, a script error): not an outage. */
const isPermanent = (error: Redis.RedisError): boolean =>
  error.cause instanceof ErrorReply && !TRANSIENT_REPLY.test(error.cause.message)

/** Bytes the Redis log counts for one frame. */
export const redisFrameBytes = (frame: string): number => Buffer.byteLength(frame, "utf8") + REDIS_EVENT_OVERHEAD_BYTES

/** Options of `RunLogRedis.layer`. */
export interface RunLogRedisOptions {
  /** `redis://[user:password@]host:port[/db]` or `rediss://…` */
  readonly url: Redacted.Redacted<string>
  readonly settings: RunLogSettings
  /** Prefix of every key and of the notes channel (default `agentwire:`). */
  readonly keyPrefix?: string | undefined
  /** Events all runs may buffer while Redis is unreachable (default `DEFAULT_BUFFER_EVENTS`). */
  readonly bufferEvents?: number | undefined
  /** Named in startup failures (default `AGENTWIRE_REDIS_URL`). */
  readonly variable?: string | undefined
  /**
   * This instance's id (`RedisInstance.instance_id`). When set, the log fences
   * appends by ownership: a run's first append records this instance as its
   * owner (field `o` of `run:<id>`, and `instance:<id>:runs`, a hash
   * run → user of the owner's open runs); an append or release by another
   * writer than the owner is refused (`fenced`: not logged, not delivered,
   * and the run stops). `InstanceLeaseRedis` moves the ownership of a dead
   * instance's runs to the instance that closes them. Unset: unfenced, as before.
   */
  readonly instanceId?: string | undefined
  /**
   * How long a finished run stays past each replay read, in ms, even past its
   * retention (default `REPLAY_GRACE_MS`, 30 s, as in memory); shorter in tests.
   */
  readonly replayGraceMs?: number | undefined
}

// ---------------------------------------------------------------------------------------------
// Lua. ARGV[1] is always the key prefix; helpers shared by every script come first.

const PRELUDE = `
local P = ARGV[1]
${RedisInstance.LUA_NOW_MS}
local function split(s)
  local out = {}
  for part in string.gmatch(s, '([^\\n]*)\\n?') do out[#out + 1] = part end
  return out
end
-- the bytes of all logs and of the user's share move together
local function add_bytes(user, n)
  local total = redis.call('INCRBY', P .. 'bytes', n)
  if user then
    if redis.call('HINCRBY', P .. 'ubytes', user, n) <= 0 then redis.call('HDEL', P .. 'ubytes', user) end
  end
  return total
end
-- a tombstone: tombinfo run → user, last seq, thread; utombs:<user> indexes the user's (for an erase)
local function tomb_add(id, user, last, now, tomb_ms, thread)
  redis.call('ZADD', P .. 'tombs', now + tomb_ms, id)
  redis.call('HSET', P .. 'tombinfo', id, user .. '\\n' .. last .. '\\n' .. (thread or ''))
  local ut = P .. 'utombs:' .. user
  redis.call('ZREMRANGEBYSCORE', ut, '-inf', now)
  redis.call('ZADD', ut, now + tomb_ms, id)
  redis.call('PEXPIRE', ut, tomb_ms)
end
local function tomb_del(id)
  local t = redis.call('HGET', P .. 'tombinfo', id)
  if not t then return end
  redis.call('ZREM', P .. 'tombs', id)
  redis.call('HDEL', P .. 'tombinfo', id)
  redis.call('ZREM', P .. 'utombs:' .. split(t)[1], id)
end
-- read within the replay grace: kept past its retention, evicted last
local function being_read(id, now, grace)
  local rd = redis.call('HGET', P .. 'run:' .. id, 'rd')
  return rd and tonumber(rd) + grace > now
end
-- a finished run leaves: its keys, its bytes, its place in its user's list; a tombstone stays
local function forget_ended(id, now, tomb_ms)
  redis.call('ZREM', P .. 'ended', id)
  local info = redis.call('HGET', P .. 'endinfo', id)
  if not info then return end
  redis.call('HDEL', P .. 'endinfo', id)
  local f = split(info)
  redis.call('DEL', P .. 'run:' .. id, P .. 'run:' .. id .. ':s')
  redis.call('ZREM', P .. 'user:' .. f[1], id)
  add_bytes(f[1], -tonumber(f[2]))
  redis.call('DECR', P .. 'runs')
  tomb_add(id, f[1], f[3], now, tomb_ms, f[5])
end
-- the owner's index of its open runs (instance loss: InstanceLeaseRedis reads it)
local function unindex(id, h)
  local o = redis.call('HGET', h, 'o')
  if o then redis.call('HDEL', P .. 'instance:' .. o .. ':runs', id) end
end
-- a run leaves without a trace (reused id, erase, lost log): keys, bytes, lists, tombstone
local function drop_run(id)
  local h = P .. 'run:' .. id
  local f = redis.call('HMGET', h, 'u', 'b')
  local user, bytes = f[1], f[2]
  local info = redis.call('HGET', P .. 'endinfo', id)
  if info then
    local e = split(info)
    user, bytes = e[1], e[2]
  end
  unindex(id, h)
  redis.call('DEL', h, h .. ':s')
  redis.call('ZREM', P .. 'ended', id)
  redis.call('HDEL', P .. 'endinfo', id)
  if user then
    redis.call('ZREM', P .. 'user:' .. user, id)
    add_bytes(user, -tonumber(bytes or '0'))
    redis.call('DECR', P .. 'runs')
  end
  tomb_del(id)
end
local function end_run(id, h, status, ended_at, now, ret_ms, grace)
  unindex(id, h)
  redis.call('HSET', h, 'st', status, 'ea', ended_at, 'em', now)
  local f = redis.call('HMGET', h, 'u', 'b', 'l', 'th', 'rd')
  redis.call('ZADD', P .. 'ended', redis.call('INCR', P .. 'endseq'), id)
  redis.call('HSET', P .. 'endinfo', id, f[1] .. '\\n' .. f[2] .. '\\n' .. f[3] .. '\\n' .. now .. '\\n' .. (f[4] or ''))
  -- the keys outlive the run's retention (and a replay's grace); expiry is checked explicitly, this frees them
  local ttl = ret_ms
  if f[5] then ttl = math.max(ttl, tonumber(f[5]) + grace - now) end
  ttl = math.max(ttl, 1)
  redis.call('PEXPIRE', h, ttl)
  redis.call('PEXPIRE', h .. ':s', ttl)
end
-- evicts the finished runs of the sorted set zkey, oldest first (those being read only in a second
-- pass), while over() holds; never the run self that appends: a run is not evicted by its own
-- events (one that ended over the share stays until another run needs the room)
local function evict(zkey, self, now, tomb_ms, grace, over)
  for pass = 1, 2 do
    local skip = 0
    while over() do
      local batch = redis.call('ZRANGE', zkey, skip, skip + 63)
      if #batch == 0 then break end
      for _, other in ipairs(batch) do
        if not over() then break end
        if other ~= self and redis.call('HEXISTS', P .. 'endinfo', other) == 1 and (pass == 2 or not being_read(other, now, grace)) then
          forget_ended(other, now, tomb_ms)
          redis.call('INCR', P .. 'evicted')
        else
          skip = skip + 1
        end
      end
    end
  end
end
local function sweep(now, ret_ms, tomb_ms, max_tombs, grace)
  local skip = 0
  for _ = 1, 1000 do
    local first = redis.call('ZRANGE', P .. 'ended', skip, skip)
    if #first == 0 then break end
    local info = redis.call('HGET', P .. 'endinfo', first[1])
    if info and tonumber(split(info)[4]) + ret_ms > now then break end
    -- a run being replayed stays until its reader is done
    if info and being_read(first[1], now, grace) then skip = skip + 1 else forget_ended(first[1], now, tomb_ms) end
  end
  local gone = redis.call('ZRANGEBYSCORE', P .. 'tombs', '-inf', now, 'LIMIT', 0, 1000)
  if #gone > 0 then
    redis.call('ZREM', P .. 'tombs', unpack(gone))
    redis.call('HDEL', P .. 'tombinfo', unpack(gone))
  end
  local extra = redis.call('ZCARD', P .. 'tombs') - max_tombs
  if extra > 0 then
    local old = redis.call('ZRANGE', P .. 'tombs', 0, math.min(extra, 1000) - 1)
    redis.call('ZREM', P .. 'tombs', unpack(old))
    redis.call('HDEL', P .. 'tombinfo', unpack(old))
  end
end
-- the run as user sees it: {'ok', fields} | {'exp', last} | {'nf'}
local function locate(id, user, now, ret_ms, grace)
  local f = redis.call('HMGET', P .. 'run:' .. id, 'u', 'th', 'a', 'st', 'sa', 'ea', 'l', 'em', 'rd')
  if f[1] then
    if f[1] ~= user then return {'nf'} end
    -- past its retention and not being read: expired (the sweep tombstones it)
    if f[4] ~= 'running' and f[8] and tonumber(f[8]) + ret_ms <= now and not (f[9] and tonumber(f[9]) + grace > now) then
      return {'exp', f[7]}
    end
    return {'ok', f}
  end
  local info = redis.call('HGET', P .. 'endinfo', id)
  if info then
    local e = split(info)
    if e[1] == user then return {'exp', e[3]} end
    return {'nf'}
  end
  local t = redis.call('HGET', P .. 'tombinfo', id)
  if t then
    local e = split(t)
    local expires = redis.call('ZSCORE', P .. 'tombs', id)
    if e[1] == user and expires and tonumber(expires) > now then return {'exp', e[2]} end
  end
  return {'nf'}
end
local function summary(f)
  return {f[2] or '', f[3] or '', f[4] or '', f[5] or '', f[6] or '', f[7] or '0'}
end
`

// ARGV: prefix, run_id, user, thread, agent ('' unless depth 0), seq, type, frame, end status
// ('' unless root agent_completed), timestamp, bytes, maxEvents, softCap, maxBytes, retentionMs,
// tombstoneMs, maxTombstones, runOverhead, writer (this instance's id, '' = unfenced), maxBytesPerUser, replayGraceMs
// → 'ok' | 'event_limit' | 'log_full' | 'refused' | 'dup' (already logged) | 'lost' (its start is not in the log)
//   | 'fenced' (another instance took the run over: its owner's lease had expired)
const APPEND_LUA = PRELUDE + `
local id, user, thread, agent = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local seq, typ, frame, end_status, ts = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local bytes, max_events, soft_cap, max_bytes = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local ret_ms, tomb_ms, run_overhead, writer = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[18]), ARGV[19]
local max_user, grace = tonumber(ARGV[20]), tonumber(ARGV[21])
local now = now_ms()
local h = P .. 'run:' .. id
local s = h .. ':s'
local last = tonumber(redis.call('HGET', h, 'l') or '-1')
if last > 0 and seq == 1 then
  -- a run id used again (embedders choosing their own): the new run replaces the old
  drop_run(id)
  last = -1
end
if last < 0 then
  if redis.call('HEXISTS', P .. 'endinfo', id) == 1 then forget_ended(id, now, tomb_ms) end
  if seq ~= 1 then
    -- the run's beginning is not in this log (Redis lost its data): it is remembered as expired
    tomb_add(id, user, seq, now, tomb_ms, thread)
    return 'lost'
  end
  redis.call('HSET', h, 'u', user, 'th', thread, 'a', agent, 'st', 'running', 'sa', ts, 'l', 0, 'b', run_overhead)
  if writer ~= '' then
    -- the run's owner: only it appends (until another instance takes the run over, see InstanceLeaseRedis)
    redis.call('HSET', h, 'o', writer)
    redis.call('HSET', P .. 'instance:' .. writer .. ':runs', id, user)
  end
  redis.call('ZADD', P .. 'user:' .. user, redis.call('INCR', P .. 'starts'), id)
  add_bytes(user, run_overhead)
  redis.call('INCR', P .. 'runs')
  tomb_del(id)
  last = 0
end
if writer ~= '' then
  local o = redis.call('HGET', h, 'o')
  if o and o ~= writer then return 'fenced' end
end
if seq <= last then return 'dup' end
if last >= max_events then return 'refused' end
if seq ~= last + 1 then return redis.error_reply('RUNLOG_ORDER run ' .. id .. ' expected seq ' .. (last + 1) .. ', got ' .. seq) end
if redis.call('HGET', h, 'st') ~= 'running' then
  -- more root runs on one context (embedders running an engine twice): the run is open again
  redis.call('ZREM', P .. 'ended', id)
  redis.call('HDEL', P .. 'endinfo', id)
  redis.call('PERSIST', h)
  redis.call('PERSIST', s)
  redis.call('HSET', h, 'st', 'running')
  redis.call('HDEL', h, 'ea', 'em')
  local o = redis.call('HGET', h, 'o')
  if o then redis.call('HSET', P .. 'instance:' .. o .. ':runs', id, user) end
end
if agent ~= '' and redis.call('HGET', h, 'a') == '' then redis.call('HSET', h, 'a', agent) end
redis.call('XADD', s, seq .. '-0', 't', typ, 'f', frame)
redis.call('HSET', h, 'l', seq)
redis.call('HINCRBY', h, 'b', bytes)
local total = add_bytes(user, bytes)
local running = true
if end_status ~= '' then
  end_run(id, h, end_status, ts, now, ret_ms, grace)
  running = false
end
-- a note only where an instance waits on this run (resume, SSE): most events have no reader but the live fan-out
if redis.call('EXISTS', P .. 'wait:' .. id) == 1 then redis.call('PUBLISH', P .. 'notes', id .. ' ' .. seq) end
-- the user's share: a user past it loses their own oldest finished runs first, so one busy user cannot
-- push everyone else's runs out of retention; their active runs alone over it must end
local function user_over()
  return tonumber(redis.call('HGET', P .. 'ubytes', user) or '0') > max_user
end
if user_over() then
  evict(P .. 'user:' .. user, id, now, tomb_ms, grace, user_over)
  if user_over() and running then return 'log_full' end
end
-- the whole budget: the oldest finished runs go first, those being replayed last; active runs alone over it must end
if total > max_bytes then
  local function over() return tonumber(redis.call('GET', P .. 'bytes') or '0') > max_bytes end
  evict(P .. 'ended', id, now, tomb_ms, grace, over)
  if over() and running then return 'log_full' end
end
if seq > soft_cap and running then return 'event_limit' end
return 'ok'
`

// ARGV: prefix, run_id, user, after_seq, maxEvents, maxBytes, retentionMs, replayGraceMs, mark ('1': a replay's read)
// → {'nf'} | {'exp', last} | {'after', last} | {'ok', thread, agent, status, started, ended, last, seq1, type1, frame1, …}
const READ_LUA = PRELUDE + `
local id, user, after, max_events, max_bytes = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ret_ms, grace, mark = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local now = now_ms()
local found = locate(id, user, now, ret_ms, grace)
if found[1] ~= 'ok' then return found end
local f = found[2]
local last = tonumber(f[7])
if mark == '1' then
  -- a replay in progress keeps the run grace ms past each read, even past its retention
  local h = P .. 'run:' .. id
  redis.call('HSET', h, 'rd', now)
  local ttl = redis.call('PTTL', h)
  if ttl >= 0 and ttl < grace then
    redis.call('PEXPIRE', h, grace)
    redis.call('PEXPIRE', h .. ':s', grace)
  end
end
if after > last then return {'after', tostring(last)} end
local out = {'ok'}
for _, v in ipairs(summary(f)) do out[#out + 1] = v end
if max_events > 0 and after < last then
  local entries = redis.call('XRANGE', P .. 'run:' .. id .. ':s', '(' .. after .. '-0', '+', 'COUNT', max_events)
  local size = 0
  for i, entry in ipairs(entries) do
    local fields = entry[2]
    local typ, frame = fields[2], fields[4]
    if i > 1 and size + #frame > max_bytes then break end
    size = size + #frame
    out[#out + 1] = string.match(entry[1], '^(%d+)')
    out[#out + 1] = typ
    out[#out + 1] = frame
  end
end
return out
`

// ARGV: prefix, user, thread ('' = any), status ('' = any), limit, retentionMs, tombstoneMs, maxTombstones, replayGraceMs, scan
// → {run_id, thread, agent, status, started, ended, last, …} newest first, among the user's scan newest runs
const LIST_LUA = PRELUDE + `
local user, thread, status, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
sweep(now_ms(), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]))
local out = {}
local n = 0
-- bounded work: the user's newest runs only, however many they have retained
for _, id in ipairs(redis.call('ZREVRANGE', P .. 'user:' .. user, 0, tonumber(ARGV[10]) - 1)) do
  if n >= limit then break end
  local f = redis.call('HMGET', P .. 'run:' .. id, 'u', 'th', 'a', 'st', 'sa', 'ea', 'l')
  if f[1] and (thread == '' or f[2] == thread) and (status == '' or f[4] == status) then
    out[#out + 1] = id
    for _, v in ipairs(summary(f)) do out[#out + 1] = v end
    n = n + 1
  end
end
return out
`

// ARGV: prefix, run_id, ended_at, retentionMs, writer ('' = unfenced), replayGraceMs → 'ended' | 'no' | 'fenced'
const RELEASE_LUA = PRELUDE + `
local id, ts, ret_ms, writer, grace = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local h = P .. 'run:' .. id
if redis.call('HGET', h, 'st') ~= 'running' then return 'no' end
if writer ~= '' then
  local o = redis.call('HGET', h, 'o')
  if o and o ~= writer then return 'fenced' end
end
end_run(id, h, 'cancelled', ts, now_ms(), ret_ms, grace)
redis.call('PUBLISH', P .. 'notes', id .. ' ' .. redis.call('HGET', h, 'l'))
return 'ended'
`

// ARGV: prefix, run_id, user, last_seq, tombstoneMs, thread: a run whose buffered events were dropped is remembered as expired
const LOST_LUA = PRELUDE + `
local id, user, last, tomb_ms, thread = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
drop_run(id)
tomb_add(id, user, last, now_ms(), tomb_ms, thread)
redis.call('PUBLISH', P .. 'notes', id .. ' ' .. last)
return 'ok'
`

// ARGV: prefix, user, thread ('' = every thread), retentionMs, tombstoneMs, maxTombstones, replayGraceMs
// → the number of ended runs erased. The user's ended runs (of that thread) and their tombstones go
// without a trace; running runs keep their logs. Expired runs are swept first (they count as tombstones).
const ERASE_LUA = PRELUDE + `
local user, thread = ARGV[2], ARGV[3]
sweep(now_ms(), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
local list = P .. 'user:' .. user
local erased = 0
for _, id in ipairs(redis.call('ZRANGE', list, 0, -1)) do
  local f = redis.call('HMGET', P .. 'run:' .. id, 'st', 'th')
  local info = redis.call('HGET', P .. 'endinfo', id)
  local th = f[2]
  if not th and info then th = split(info)[5] end
  if f[1] ~= 'running' and (thread == '' or th == thread) then
    if f[1] or info then erased = erased + 1 end
    drop_run(id)
    redis.call('ZREM', list, id)
  end
end
local ut = P .. 'utombs:' .. user
for _, id in ipairs(redis.call('ZRANGE', ut, 0, -1)) do
  local t = redis.call('HGET', P .. 'tombinfo', id)
  local e = t and split(t)
  if not e or e[1] ~= user then
    redis.call('ZREM', ut, id)
  elseif thread == '' or e[3] == thread then
    tomb_del(id)
  end
end
return erased
`

// ARGV: prefix, retentionMs, tombstoneMs, maxTombstones, replayGraceMs → {runs, ended, bytes, tombstones, evicted}
const SWEEP_LUA = PRELUDE + `
sweep(now_ms(), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
return {
  redis.call('GET', P .. 'runs') or '0', tostring(redis.call('ZCARD', P .. 'ended')),
  redis.call('GET', P .. 'bytes') or '0', tostring(redis.call('ZCARD', P .. 'tombs')),
  redis.call('GET', P .. 'evicted') or '0'
}
`

// ARGV: prefix, new epoch → the epoch
const EPOCH_LUA = PRELUDE + `
redis.call('SET', P .. 'epoch', ARGV[2], 'NX')
return redis.call('GET', P .. 'epoch')
`

type Args = ReadonlyArray<string | number>
const script = <R>(lua: string) => Redis.script((...args: Args) => args, { lua, numberOfKeys: 0 }).withReturnType<R>()

const appendScript = script<string>(APPEND_LUA)
const readScript = script<ReadonlyArray<string | null>>(READ_LUA)
const listScript = script<ReadonlyArray<string>>(LIST_LUA)
const releaseScript = script<string>(RELEASE_LUA)
const lostScript = script<string>(LOST_LUA)
const eraseScript = script<number>(ERASE_LUA)
const sweepScript = script<ReadonlyArray<string>>(SWEEP_LUA)
const epochScript = script<string>(EPOCH_LUA)

// ---------------------------------------------------------------------------------------------

/** How long a script waits for Redis's reply before it fails (the log then counts as unreachable), in ms. */
export const REPLY_TIMEOUT_MS = 2_000
/** How often the replies owed are checked against their deadline, in ms. */
const REPLY_SWEEP_MS = 250

/** Life of a `wait:<run_id>` key, in ms; renewed every third of it while the instance waits on the run. */
export const WAIT_KEY_TTL_MS = 30_000

interface Waiter {
  readonly after_seq: number
  readonly wake: () => void
}

interface Pending {
  readonly user_id: string
  readonly thread_id: string
  readonly events: Array<{ readonly event: AgentEvent; readonly frame: string }>
  /**
   * The run's log is given up (the buffer overflowed, or Redis refused the run's events for good);
   * once Redis answers it is recorded as expired at `last_seq`.
   */
  lost: boolean
  last_seq: number
  /** The run's emitter is gone: end the run (`release`) once its events are in. */
  released: boolean
  /** Refusals in a row that may pass (LOADING, BUSY, OOM…) while Redis answers; at `FLUSH_ATTEMPTS` the run is given up. */
  failures: number
}

const summaryFrom = (run_id: string, user_id: string, f: ReadonlyArray<string | null>, at: number): RunSummary => {
  const ended = f[at + 4] ?? ""
  return {
    run_id,
    thread_id: f[at] ?? "",
    user_id,
    agent_name: f[at + 1] ?? "",
    status: (f[at + 2] ?? "running") as RunStatus,
    started_at: f[at + 3] ?? "",
    ...(ended === "" ? {} : { ended_at: ended }),
    last_seq: Number(f[at + 5] ?? 0)
  }
}

/** Builds the Redis log over an already connected `Redis` / `NodeRedis`; its fibers run in the surrounding scope. */
export const make = (options: {
  readonly settings: RunLogSettings
  readonly keyPrefix?: string | undefined
  readonly bufferEvents?: number | undefined
  /** This instance's id (`RedisInstance.instance_id`): when set, appends are fenced by run ownership (see `instanceId` of `RunLogRedisOptions`). */
  readonly instanceId?: string | undefined
  /** See `replayGraceMs` of `RunLogRedisOptions` (default `REPLAY_GRACE_MS`). */
  readonly replayGraceMs?: number | undefined
}) =>
  Effect.gen(function*() {
    const redis = yield* Redis.Redis
    const { client } = yield* NodeRedis.NodeRedis
    const { settings } = options
    const P = options.keyPrefix ?? "agentwire:"
    const bufferBound = options.bufferEvents ?? DEFAULT_BUFFER_EVENTS
    const writer = options.instanceId ?? ""
    const grace = options.replayGraceMs ?? REPLAY_GRACE_MS
    // runs another instance took over from this one: their later appends answer `fenced` without asking
    // Redis (said once each; forgotten at release; bounded: a paused instance has few)
    const fencedRuns = new Set<string>()
    const fenced = (run_id: string) =>
      Effect.suspend(() => {
        if (fencedRuns.has(run_id)) return Effect.void
        if (fencedRuns.size >= MAX_REMEMBERED_RUNS) fencedRuns.clear()
        fencedRuns.add(run_id)
        return Effect.logWarning("another instance took this run over (this instance's lease had expired): the run stops here, its further events are dropped").pipe(
          Effect.annotateLogs({ run_id, instance_id: writer })
        )
      })
    // runs whose events Redis refused for good (a key of the wrong type, a script error): their later
    // appends answer `log_unavailable` without asking Redis, so they end (forgotten at release)
    const failedRuns = new Set<string>()
    const softCap = settings.maxEventsPerRun - terminalReserve(settings.maxEventsPerRun)
    // node-redis times a command out only until it is written; a reply Redis owes for ever (stopped, or a
    // partition that drops packets) held the run's next event, stops and reads as long. Every script here
    // fails after REPLY_TIMEOUT_MS instead (one sweep timer for all), and the log counts as unreachable
    // (appends buffer at once) until Redis answers something again
    const deadlines = new Set<{ readonly at: number; readonly expire: () => void }>()
    let hung = false
    yield* Effect.acquireRelease(
      Effect.sync(() =>
        setInterval(() => {
          const now = Date.now()
          for (const d of deadlines) {
            if (d.at > now) continue
            deadlines.delete(d)
            hung = true
            d.expire()
          }
        }, REPLY_SWEEP_MS)
      ),
      (timer) => Effect.sync(() => clearInterval(timer))
    )
    const forkCommand = Effect.runForkWith(yield* Effect.context<never>())
    const bounded = <A>(command: Effect.Effect<A, Redis.RedisError>): Effect.Effect<A, Redis.RedisError> =>
      Effect.callback<A, Redis.RedisError>((resume) => {
        const fiber = forkCommand(command)
        const deadline = {
          at: Date.now() + REPLY_TIMEOUT_MS,
          expire: () => {
            resume(Effect.fail(new Redis.RedisError({ cause: new Error(`Redis did not answer within ${REPLY_TIMEOUT_MS} ms`) })))
            fiber.interruptUnsafe()
          }
        }
        deadlines.add(deadline)
        fiber.addObserver((exit) => {
          if (!deadlines.delete(deadline)) return
          if (Exit.isSuccess(exit)) hung = false
          resume(exit)
        })
        return Effect.sync(() => {
          deadlines.delete(deadline)
          fiber.interruptUnsafe()
        })
      })
    const run = <R>(s: Redis.Script<{ params: Args; result: R }>, ...args: Args) => bounded(redis.eval(s)(P, ...args))

    const waiters = new Map<string, Set<Waiter>>()
    const pending = new Map<string, Pending>()
    let buffered = 0
    let lastStats: RunLogStats = { runs: 0, activeRuns: 0, bytes: 0, maxBytes: settings.maxBytes, tombstones: 0, evicted: 0 }

    const wake = (run_id: string, seq: number) => {
      const mine = waiters.get(run_id)
      if (mine === undefined) return
      for (const w of mine) if (seq > w.after_seq || seq < 0) w.wake()
    }
    const wakeAll = () => {
      for (const mine of waiters.values()) for (const w of mine) w.wake()
    }

    // runs with local waiters: `wait:<run_id>` asks appends (on any instance) to publish their notes
    const watched = new Map<string, { ready: boolean; readonly queued: Array<() => void> }>()
    const setWaitKey = (run_id: string) =>
      // a failure is survived: while Redis is unreachable nothing is appended; when it is back the keys are set again
      Effect.ignore(redis.send("SET", `${P}wait:${run_id}`, "1", "PX", String(WAIT_KEY_TTL_MS)))
    /** Runs `then` once `wait:<run_id>` is in Redis (at once when it already is). */
    const whenWatched = (run_id: string, then: () => void) => {
      let entry = watched.get(run_id)
      if (entry?.ready === true) return then()
      if (entry === undefined) {
        const fresh = { ready: false, queued: [then] }
        watched.set(run_id, fresh)
        runFork(Effect.ensuring(setWaitKey(run_id), Effect.sync(() => {
          fresh.ready = true
          for (const f of fresh.queued.splice(0)) f()
        })))
        return
      }
      entry.queued.push(then)
    }
    const rewatchAll = Effect.suspend(() => Effect.forEach(Array.from(watched.keys()), setWaitKey, { concurrency: 16, discard: true }))

    let epoch = yield* run(epochScript, generateId("epoch"))
    const refreshEpoch = run(epochScript, generateId("epoch")).pipe(
      Effect.tap((e) =>
        Effect.suspend(() => {
          if (e === epoch) return Effect.void
          epoch = e
          return Effect.logWarning("Redis came back without the run log: a new epoch begins").pipe(Effect.annotateLogs({ epoch: e }))
        })
      ),
      Effect.ignore
    )

    // Redis is back: buffered events flush (on their timer), the epoch is checked, waiters look again
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    const onReady = () => {
      wakeAll()
      runFork(refreshEpoch)
      // the wait keys again (Redis may have come back empty), then everyone looks once more
      runFork(Effect.andThen(rewatchAll, Effect.sync(wakeAll)))
    }
    client.on("ready", onReady)

    // one subscriber per instance: notes `<run_id> <seq>` wake this instance's waiters. Destroyed when the
    // scope ends, also mid-connect (connecting is interruptible: a Redis that stops answering cannot hold shutdown)
    const subscriber = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const duplicate = client.duplicate()
        duplicate.on("error", () => {}) // reported by the main client; node-redis rethrows unhandled errors
        // (re)subscribed: whatever was published meanwhile may be lost; everyone looks again
        duplicate.on("ready", onReady)
        return duplicate
      }),
      (duplicate) => Effect.sync(() => { if (duplicate.isOpen) duplicate.destroy() })
    )
    yield* Effect.tryPromise({
      try: async () => {
        await subscriber.connect()
        await subscriber.subscribe(P + "notes", (message) => {
          const space = message.lastIndexOf(" ")
          wake(message.slice(0, space), Number(message.slice(space + 1)))
        })
      },
      catch: (cause) => new Redis.RedisError({ cause })
    })

    const unavailable = (error: Redis.RedisError) => new RunLogUnavailableError({ reason: redisStartReason(error.cause) })

    const toResult = (answer: string, run_id: string): AppendResult => {
      if (answer === "dup" || answer === "lost") return "ok"
      if (answer === "ok" || answer === "event_limit" || answer === "log_full" || answer === "refused" || answer === "fenced") {
        if (answer !== "refused" && answer !== "fenced") wake(run_id, Number.MAX_SAFE_INTEGER)
        return answer
      }
      throw new Error(`unexpected answer from the run log's append script: ${answer}`)
    }

    const sendAppend = (event: AgentEvent, frame: string) => {
      const endStatus = event.type === "agent_completed" && event.depth === 0 ? event.status : ""
      return run(
        appendScript,
        event.run_id,
        event.user_id,
        event.thread_id,
        event.depth === 0 ? event.agent_name : "",
        event.seq,
        event.type,
        frame,
        endStatus,
        event.timestamp,
        redisFrameBytes(frame),
        settings.maxEventsPerRun,
        softCap,
        settings.maxBytes,
        settings.retentionMs,
        settings.tombstoneMs,
        MAX_TOMBSTONES,
        REDIS_RUN_OVERHEAD_BYTES,
        writer,
        settings.maxBytesPerUser,
        grace
      )
    }

    /**
     * Keeps an event for later, answering what Redis would about the run's
     * event cap; `log_unavailable` when the buffer is full (the run's log is then given up).
     */
    const bufferEvent = (event: AgentEvent, frame: string): AppendResult => {
      if (event.seq > settings.maxEventsPerRun) return "refused"
      let p = pending.get(event.run_id)
      if (p === undefined) {
        pending.set(event.run_id, p = { user_id: event.user_id, thread_id: event.thread_id, events: [], lost: false, last_seq: 0, released: false, failures: 0 })
      }
      p.last_seq = event.seq
      if (p.lost) return "log_unavailable"
      if (buffered >= bufferBound) {
        p.lost = true
        buffered -= p.events.length
        p.events.length = 0
        return "log_unavailable"
      }
      p.events.push({ event, frame })
      buffered++
      return event.seq > softCap ? "event_limit" : "ok"
    }

    const isOrderError = (error: Redis.RedisError) => String(error.cause).includes("RUNLOG_ORDER")

    /** Redis answered the run's append with an error: the run's log is given up (recorded as expired), its run ends. */
    const giveUp = (event: AgentEvent, error: Redis.RedisError): Effect.Effect<AppendResult> =>
      Effect.suspend(() => {
        if (failedRuns.size >= MAX_REMEMBERED_RUNS) failedRuns.clear()
        failedRuns.add(event.run_id)
        return Effect.logError("the run log refused a run's event for good: the run's log is given up, the run ends (LOG_UNAVAILABLE)", error.cause).pipe(
          Effect.andThen(run(lostScript, event.run_id, event.user_id, event.seq, settings.tombstoneMs, event.thread_id)),
          Effect.tap(() => Effect.sync(() => wake(event.run_id, -1))),
          Effect.catch((e) => Effect.logError("could not record the run as expired either", e.cause)),
          Effect.annotateLogs({ run_id: event.run_id, user_id: event.user_id }),
          Effect.as<AppendResult>("log_unavailable")
        )
      })

    const append = (event: AgentEvent, frame: string): Effect.Effect<AppendResult> =>
      Effect.suspend(() => {
        const run_id = event.run_id
        if (event.seq === 1) {
          // a run id used again (embedders choosing their own) starts afresh
          fencedRuns.delete(run_id)
          failedRuns.delete(run_id)
        }
        if (fencedRuns.has(run_id)) return Effect.succeed<AppendResult>("fenced")
        if (failedRuns.has(run_id)) return Effect.succeed<AppendResult>("log_unavailable")
        if (pending.has(run_id) || !client.isReady || hung) return Effect.succeed(bufferEvent(event, frame))
        return sendAppend(event, frame).pipe(
          Effect.tap((answer) => answer === "fenced" ? fenced(run_id) : Effect.void),
          Effect.map((answer) => toResult(answer, run_id)),
          Effect.catch((error) =>
            isOrderError(error)
              ? Effect.die(error)
              : isPermanent(error)
              ? giveUp(event, error)
              : Effect.succeed(bufferEvent(event, frame))
          )
        )
      })

    /** Finishes a run's flush step that may fail: true when done (or given up for good), false to retry later. */
    const settled = (p: Pending, what: string, run_id: string, outcome: Result.Result<unknown, Redis.RedisError>): Effect.Effect<boolean> => {
      if (Result.isSuccess(outcome)) {
        p.failures = 0
        return Effect.succeed(true)
      }
      const error = outcome.failure
      if (!isPermanent(error) && !(error.cause instanceof ErrorReply && ++p.failures >= FLUSH_ATTEMPTS)) return Effect.succeed(false)
      return Effect.as(
        Effect.logError(`the run log refused ${what} for good; given up`, error.cause).pipe(Effect.annotateLogs({ run_id, user_id: p.user_id })),
        true
      )
    }

    const dropBuffered = (p: Pending) => {
      buffered -= p.events.length
      p.events.length = 0
    }

    // buffered events go out in order, run by run, while Redis answers. A run's flush never fails nor holds
    // up the others': a refusal that may pass is retried on the next tick (FLUSH_ATTEMPTS times in a row at
    // most), one that will not (a key of the wrong type, a script error) gives the run's log up at once
    const flushRun = (run_id: string, p: Pending): Effect.Effect<void> =>
      Effect.gen(function*() {
        while (p.events.length > 0) {
          if (!client.isReady) return
          const { event, frame } = p.events[0]!
          const sent = yield* Effect.result(sendAppend(event, frame))
          if (Result.isFailure(sent) && isOrderError(sent.failure)) {
            // cannot happen unless the store lost part of the run: give its log up
            yield* Effect.logError("run log out of order after an outage", sent.failure.cause)
            p.lost = true
            dropBuffered(p)
            break
          }
          if (Result.isFailure(sent)) {
            if (!(yield* settled(p, "a buffered event", run_id, sent))) return
            // its later appends answer log_unavailable: the run ends
            if (failedRuns.size >= MAX_REMEMBERED_RUNS) failedRuns.clear()
            failedRuns.add(run_id)
            p.lost = true
            dropBuffered(p)
            break
          }
          p.failures = 0
          const answer = sent.success
          if (answer === "fenced") {
            // another instance closed the run meanwhile: what waited here is dropped, the run's next append stops it
            yield* fenced(run_id)
            dropBuffered(p)
            p.released = false
            break
          }
          if (answer === "refused") {
            // past the hard cap: so is every later event of the run
            dropBuffered(p)
            break
          }
          p.events.shift()
          buffered--
          wake(run_id, event.seq)
        }
        if (p.lost) {
          const recorded = yield* Effect.result(run(lostScript, run_id, p.user_id, p.last_seq, settings.tombstoneMs, p.thread_id))
          if (!(yield* settled(p, "recording a lost run", run_id, recorded))) return
          wake(run_id, -1)
        } else if (p.released) {
          if (!(yield* settled(p, "closing a run", run_id, yield* Effect.result(releaseNow(run_id))))) return
        }
        pending.delete(run_id)
      })
    const releaseNow = (run_id: string) =>
      run(releaseScript, run_id, new Date().toISOString(), settings.retentionMs, writer, grace).pipe(
        Effect.tap(() => Effect.sync(() => wake(run_id, -1)))
      )
    const flush = Effect.suspend(() =>
      pending.size === 0 || !client.isReady
        ? Effect.void
        : Effect.forEach(Array.from(pending), ([run_id, p]) => flushRun(run_id, p), { discard: true })
    )
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(FLUSH_INTERVAL_MS), flush)))

    const statsNow = run(sweepScript, settings.retentionMs, settings.tombstoneMs, MAX_TOMBSTONES, grace).pipe(
      Effect.map((r): RunLogStats => {
        const runs = Number(r[0])
        return (lastStats = {
          runs,
          activeRuns: runs - Number(r[1]),
          bytes: Number(r[2]),
          maxBytes: settings.maxBytes,
          tombstones: Number(r[3]),
          evicted: Number(r[4])
        })
      })
    )
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(SWEEP_INTERVAL_MS), Effect.ignore(statsNow))))

    // `stats` (what /ready shows): one probe at a time, shared by every asker meanwhile, waited for at most
    // STATS_TIMEOUT_MS; a probe still unanswered by then means Redis is down, and no further one is sent
    // until it settles (a hung Redis does not collect one script per /ready)
    let probe: { readonly startedAt: number; readonly done: Deferred.Deferred<boolean> } | undefined
    const withStore = (s: RunLogStats, up: boolean): RunLogStats => ({ ...s, store: { up: up && client.isReady, bufferedEvents: buffered } })
    const stats: Effect.Effect<RunLogStats> = Effect.suspend(() => {
      const now = Date.now()
      if (probe === undefined) {
        const done = Deferred.makeUnsafe<boolean>()
        probe = { startedAt: now, done }
        runFork(statsNow.pipe(
          Effect.match({ onFailure: () => false, onSuccess: () => true }),
          Effect.flatMap((up) =>
            Effect.sync(() => {
              probe = undefined
              Deferred.doneUnsafe(done, Effect.succeed(up))
            })
          )
        ))
      }
      const left = STATS_TIMEOUT_MS - (now - probe.startedAt)
      if (left <= 0) return Effect.succeed(withStore(lastStats, false))
      return Deferred.await(probe.done).pipe(
        Effect.timeoutOption(left),
        Effect.map((up) => withStore(lastStats, Option.getOrElse(up, () => false)))
      )
    })
    // the wait keys of runs still waited on are renewed well before they expire
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(WAIT_KEY_TTL_MS / 3), rewatchAll)))

    /** A page of the run's log; `mark`: a replay's read, which keeps the run `grace` ms past it. */
    const readPage = (
      user_id: string,
      run_id: string,
      after_seq: number,
      limits: { readonly maxEvents: number; readonly maxBytes: number },
      mark: boolean
    ) =>
      run(readScript, run_id, user_id, Math.max(0, after_seq), limits.maxEvents, limits.maxBytes, settings.retentionMs, grace, mark ? "1" : "0").pipe(
        Effect.mapError(unavailable),
        Effect.flatMap((r): Effect.Effect<LogPage, RunNotFoundError | RunExpiredError | AfterSeqError> => {
          if (r[0] === "nf") return Effect.fail(new RunNotFoundError({ run_id }))
          if (r[0] === "exp") return Effect.fail(new RunExpiredError({ run_id, last_seq: Number(r[1]) }))
          if (r[0] === "after") return Effect.fail(new AfterSeqError({ after_seq, last_seq: Number(r[1]) }))
          const events: Array<LoggedEvent> = []
          for (let i = 7; i + 2 < r.length; i += 3) {
            events.push({ seq: Number(r[i]), type: r[i + 1] as AgentEvent["type"], frame: r[i + 2]! })
          }
          return Effect.succeed({ events, summary: summaryFrom(run_id, user_id, r, 1) })
        })
      )

    const summary = (user_id: string, run_id: string) =>
      Effect.flatMap(
        readPage(user_id, run_id, 0, { maxEvents: 0, maxBytes: 0 }, false),
        (page) => Effect.succeed(page.summary)
      ).pipe(Effect.catchTag("AfterSeqError", (e) => Effect.die(e)))

    // ended runs of the user (of one thread, or all: '') and their tombstones go without a trace
    const erase = (user_id: string, thread_id: string) =>
      run(eraseScript, user_id, thread_id, settings.retentionMs, settings.tombstoneMs, MAX_TOMBSTONES, grace).pipe(Effect.map(Number), Effect.mapError(unavailable))

    const waitFor = (user_id: string, run_id: string, after_seq: number) =>
      Effect.callback<void, RunNotFoundError | RunExpiredError | RunLogUnavailableError>((resume) => {
        let done = false
        const finish = (outcome: Effect.Effect<void, RunNotFoundError | RunExpiredError>) => {
          if (done) return
          done = true
          remove()
          resume(outcome)
        }
        // looks at the run; keeps waiting while nothing changed or Redis is unreachable
        const check = summary(user_id, run_id).pipe(
          Effect.matchEffect({
            onFailure: (error) =>
              Effect.sync(() => {
                if (error._tag !== "RunLogUnavailableError") finish(Effect.fail(error))
              }),
            onSuccess: (s) =>
              Effect.sync(() => {
                if (s.last_seq > after_seq || s.status !== "running") finish(Effect.void)
              })
          })
        )
        const waiter: Waiter = {
          after_seq,
          wake: () => {
            if (!done) runFork(check)
          }
        }
        const remove = () => {
          const mine = waiters.get(run_id)
          mine?.delete(waiter)
          if (mine !== undefined && mine.size === 0) {
            waiters.delete(run_id)
            // its key expires on its own (WAIT_KEY_TTL_MS)
            watched.delete(run_id)
          }
        }
        // registered before the first look, and the look waits until appends publish notes for this run,
        // so an append between the two still wakes it, on this instance or another
        let mine = waiters.get(run_id)
        if (mine === undefined) waiters.set(run_id, mine = new Set())
        mine.add(waiter)
        whenWatched(run_id, () => {
          if (!done) runFork(check)
        })
        return Effect.sync(() => {
          done = true
          remove()
        })
      })

    const service = {
      get epoch() {
        return epoch
      },
      settings,
      append: (event: AgentEvent, frame: string) => append(event, frame),
      release: (run_id: string) =>
        Effect.suspend(() => {
          // the run is over here: what this instance remembered of it goes
          fencedRuns.delete(run_id)
          failedRuns.delete(run_id)
          const p = pending.get(run_id)
          if (p !== undefined) {
            // ends once its buffered events are in (nothing else appends to it now)
            p.released = true
            return Effect.void
          }
          return Effect.ignore(releaseNow(run_id))
        }),
      summary: Effect.fn("RunLog.summary")((user_id: string, run_id: string) => summary(user_id, run_id)),
      list: Effect.fn("RunLog.list")((user_id: string, options?: ListOptions) => {
        const limit = Math.max(1, Math.min(options?.limit ?? MAX_LIST_RUNS, MAX_LIST_RUNS))
        return run(
          listScript,
          user_id,
          options?.thread_id ?? "",
          options?.status ?? "",
          limit,
          settings.retentionMs,
          settings.tombstoneMs,
          MAX_TOMBSTONES,
          grace,
          MAX_LIST_SCAN
        ).pipe(
          Effect.mapError(unavailable),
          Effect.map((r) => {
            const out: Array<RunSummary> = []
            for (let i = 0; i + 6 < r.length; i += 7) out.push(summaryFrom(r[i]!, user_id, r, i + 1))
            return out
          })
        )
      }),
      stats,
      read: Effect.fn("RunLog.read")((user_id: string, run_id: string, after_seq: number, limits: { readonly maxEvents: number; readonly maxBytes: number }) =>
        readPage(user_id, run_id, after_seq, limits, true)),
      eraseUser: Effect.fn("RunLog.eraseUser")((user_id: string) => erase(user_id, "")),
      eraseThread: Effect.fn("RunLog.eraseThread")((user_id: string, thread_id: string) => erase(user_id, thread_id)),
      waitFor
    }
    return RunLog.of(service)
  })

/**
 * The Redis log at `options.url`: connects at build time and fails with a
 * `RedisStartError` naming `host:port` (never the password) when Redis cannot
 * be reached or refuses the credentials. Reconnects with backoff (at most 2 s
 * apart) once started.
 */
export const layer = (options: RunLogRedisOptions): Layer.Layer<RunLog, RedisStartError> => {
  const url = Redacted.value(options.url)
  let started = false
  // probed first: a Redis that accepts connections but never answers would hold NodeRedis' connect for ever
  const connection = RedisInstance.layerNodeRedisQuiet({
    url,
    // commands fail at once while disconnected: appends then buffer, reads answer "unavailable"
    disableOfflineQueue: true,
    socket: {
      connectTimeout: 5000,
      // the first connection fails at once (a startup error); later ones retry forever
      reconnectStrategy: (retries: number, cause: Error) =>
        started ? Math.min(50 * 2 ** Math.min(retries, 6), 2000) + Math.floor(Math.random() * 100) : cause
    }
  }, "run log").pipe(Layer.provide(Layer.effectDiscard(RedisInstance.probe(url, { variable: options.variable }))))
  const startError = (cause: unknown) =>
    new RedisStartError({ target: redisTarget(url), variable: options.variable ?? "AGENTWIRE_REDIS_URL", reason: redisStartReason(cause) })
  const connected = Layer.catchCause(connection, (cause) =>
    Layer.effectContext(
      Effect.fail(startError(Cause.squash(cause))) as Effect.Effect<Context.Context<Redis.Redis | NodeRedis.NodeRedis>, RedisStartError>
    ))
  return Layer.effect(
    RunLog,
    Effect.tap(make(options), () =>
      Effect.sync(() => {
        started = true
      })).pipe(Effect.mapError((error) => startError(error.cause)))
  ).pipe(Layer.provide(connected))
}

/**
 * The Redis log at `AgentwireConfig.redisUrl` with its retention settings
 * (`AGENTWIRE_REDIS_BUFFER_EVENTS` sizes the outage buffer); fenced by the
 * instance's id when a `RedisInstance` is provided around it. Fails with
 * `RedisStartError` when no URL is configured or Redis cannot be reached.
 */
export const layerConfig: Layer.Layer<RunLog, RedisStartError, AgentwireConfig> = Layer.unwrap(
  Effect.gen(function*() {
    const config = yield* AgentwireConfig
    // provided around it (AgentRuntime.layerRedis): appends are fenced by this instance's ownership
    const instance = yield* Effect.serviceOption(RedisInstance.RedisInstance)
    return Option.match(config.redisUrl, {
      onNone: () =>
        Layer.effect(RunLog, Effect.fail(new RedisStartError({ target: "(none)", variable: "AGENTWIRE_REDIS_URL", reason: "not set" }))),
      onSome: (url) =>
        layer({
          url,
          settings: config.runLog,
          bufferEvents: config.redisBufferEvents,
          instanceId: Option.getOrUndefined(Option.map(instance, (i) => i.instance_id))
        })
    })
  })
)
