/**
 * `RunLog` on Redis: one log shared by every agentwire instance on that Redis.
 *
 * **Keys** (all under `keyPrefix`, default `agentwire:`; one standalone Redis
 * or a primary, not a cluster: the scripts touch keys they compute):
 * - `run:<id>:s` — a Stream per run; entry id `<seq>-0`, fields `t` (type)
 *   and `f` (frame), so Redis itself refuses a duplicate or smaller id;
 * - `run:<id>` — a hash, the run's summary (user, thread, agent, status,
 *   started/ended, last seq, bytes, end time);
 * - `user:<user>` — a sorted set of the user's runs by start order (`list`);
 * - `ended` — a sorted set of finished runs by end order, with `endinfo`
 *   (a hash run → user, bytes, last seq, end time): retention and eviction
 *   take the oldest first; `bytes`, `runs`, `evicted` — counters;
 * - `tombs` (sorted set by expiry) + `tombinfo` (hash run → user, last seq):
 *   tombstones, counted and bounded like the in-memory ones;
 * - `epoch` — set once with `SET NX`: stable across instances and restarts
 *   while Redis keeps its data; when Redis comes back empty a new one is made;
 * - `notes` — the Pub/Sub channel where each append publishes `<run_id> <seq>`.
 *
 * **Atomicity and round trips.** Each operation is one Lua script (loaded
 * once, run with `EVALSHA` through `effect/persistence/Redis`): an append is
 * one round trip that checks the order, adds the entry, updates the summary,
 * the user's list, the counters, ends the run (`PEXPIRE` of its keys by
 * `retentionMs`), evicts under the byte budget and publishes the note. A
 * periodic sweep (every `SWEEP_INTERVAL_MS`, by every instance) turns expired
 * runs into tombstones; reads check expiry themselves. Times in the scripts are
 * Redis's own (`TIME`), so instances agree.
 *
 * **Waiting.** `waitFor` holds no connection: each instance keeps one
 * subscriber on `notes` and wakes its local waiters of that run; appends made
 * here wake them directly; a reconnect of the subscriber wakes every waiter
 * (they read again, so a note lost during the outage costs nothing).
 *
 * **Outage.** Commands fail at once while Redis is unreachable (no offline
 * queue); the client reconnects with backoff. Appends then go to a per-run
 * in-process buffer (at most `bufferEvents` events for all runs together) and
 * answer `ok`; they are flushed in order when Redis is back, so `seq` stays the
 * log position (a flush that repeats an append whose answer was lost is
 * recognised and skipped). An append that would overflow the buffer answers
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
 * to them afterwards (its events are answered `refused`, so not delivered).
 *
 * **Bytes** are counted as each frame's UTF-8 length plus
 * `REDIS_EVENT_OVERHEAD_BYTES` per event and `REDIS_RUN_OVERHEAD_BYTES` per run.
 *
 * @module
 */
import { NodeRedis } from "@effect/platform-node"
import { Cause, type Context, Effect, Layer, Option, Redacted } from "effect"
import { Redis } from "effect/persistence"
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
   * writer than the owner is refused (`fenced`, answered as `refused`: not
   * logged, not delivered). `InstanceLeaseRedis` moves the ownership of a dead
   * instance's runs to the instance that closes them. Unset: unfenced, as before.
   */
  readonly instanceId?: string | undefined
}

// ---------------------------------------------------------------------------------------------
// Lua. ARGV[1] is always the key prefix; helpers shared by every script come first.

const PRELUDE = `
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function split(s)
  local out = {}
  for part in string.gmatch(s, '([^\\n]*)\\n?') do out[#out + 1] = part end
  return out
end
local function tomb_add(id, user, last, now, tomb_ms)
  redis.call('ZADD', P .. 'tombs', now + tomb_ms, id)
  redis.call('HSET', P .. 'tombinfo', id, user .. '\\n' .. last)
end
local function tomb_del(id)
  redis.call('ZREM', P .. 'tombs', id)
  redis.call('HDEL', P .. 'tombinfo', id)
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
  redis.call('DECRBY', P .. 'bytes', f[2])
  redis.call('DECR', P .. 'runs')
  tomb_add(id, f[1], f[3], now, tomb_ms)
end
-- the owner's index of its open runs (instance loss: InstanceLeaseRedis reads it)
local function unindex(id, h)
  local o = redis.call('HGET', h, 'o')
  if o then redis.call('HDEL', P .. 'instance:' .. o .. ':runs', id) end
end
local function end_run(id, h, status, ended_at, now, ret_ms)
  unindex(id, h)
  redis.call('HSET', h, 'st', status, 'ea', ended_at, 'em', now)
  local f = redis.call('HMGET', h, 'u', 'b', 'l')
  redis.call('ZADD', P .. 'ended', redis.call('INCR', P .. 'endseq'), id)
  redis.call('HSET', P .. 'endinfo', id, f[1] .. '\\n' .. f[2] .. '\\n' .. f[3] .. '\\n' .. now)
  redis.call('PEXPIRE', h, ret_ms)
  redis.call('PEXPIRE', h .. ':s', ret_ms)
end
local function sweep(now, ret_ms, tomb_ms, max_tombs)
  for _ = 1, 1000 do
    local first = redis.call('ZRANGE', P .. 'ended', 0, 0)
    if #first == 0 then break end
    local info = redis.call('HGET', P .. 'endinfo', first[1])
    if info and tonumber(split(info)[4]) + ret_ms > now then break end
    forget_ended(first[1], now, tomb_ms)
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
local function locate(id, user, now)
  local f = redis.call('HMGET', P .. 'run:' .. id, 'u', 'th', 'a', 'st', 'sa', 'ea', 'l')
  if f[1] then
    if f[1] ~= user then return {'nf'} end
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
// tombstoneMs, maxTombstones, runOverhead, writer (this instance's id, '' = unfenced)
// → 'ok' | 'event_limit' | 'log_full' | 'refused' | 'dup' (already logged) | 'lost' (its start is not in the log)
//   | 'fenced' (another instance took the run over: its owner's lease had expired)
const APPEND_LUA = PRELUDE + `
local id, user, thread, agent = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local seq, typ, frame, end_status, ts = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local bytes, max_events, soft_cap, max_bytes = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local ret_ms, tomb_ms, run_overhead, writer = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[18]), ARGV[19]
local now = now_ms()
local h = P .. 'run:' .. id
local s = h .. ':s'
local last = tonumber(redis.call('HGET', h, 'l') or '-1')
if last > 0 and seq == 1 then
  -- a run id used again (embedders choosing their own): the new run replaces the old
  local old = redis.call('HMGET', h, 'u', 'b')
  unindex(id, h)
  redis.call('DEL', h, s)
  redis.call('ZREM', P .. 'user:' .. old[1], id)
  redis.call('DECRBY', P .. 'bytes', old[2])
  redis.call('DECR', P .. 'runs')
  redis.call('ZREM', P .. 'ended', id)
  redis.call('HDEL', P .. 'endinfo', id)
  last = -1
end
if last < 0 then
  if redis.call('HEXISTS', P .. 'endinfo', id) == 1 then forget_ended(id, now, tomb_ms) end
  if seq ~= 1 then
    -- the run's beginning is not in this log (Redis lost its data): it is remembered as expired
    tomb_add(id, user, seq, now, tomb_ms)
    return 'lost'
  end
  redis.call('HSET', h, 'u', user, 'th', thread, 'a', agent, 'st', 'running', 'sa', ts, 'l', 0, 'b', run_overhead)
  if writer ~= '' then
    -- the run's owner: only it appends (until another instance takes the run over, see InstanceLeaseRedis)
    redis.call('HSET', h, 'o', writer)
    redis.call('HSET', P .. 'instance:' .. writer .. ':runs', id, user)
  end
  redis.call('ZADD', P .. 'user:' .. user, redis.call('INCR', P .. 'starts'), id)
  redis.call('INCRBY', P .. 'bytes', run_overhead)
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
local total = redis.call('INCRBY', P .. 'bytes', bytes)
local running = true
if end_status ~= '' then
  end_run(id, h, end_status, ts, now, ret_ms)
  running = false
end
redis.call('PUBLISH', P .. 'notes', id .. ' ' .. seq)
if total > max_bytes then
  -- the budget: the oldest finished runs go first; active runs alone over it must end
  while total > max_bytes do
    local first = redis.call('ZRANGE', P .. 'ended', 0, 0)
    if #first == 0 then break end
    if first[1] == id then running = false end
    forget_ended(first[1], now, tomb_ms)
    redis.call('INCR', P .. 'evicted')
    total = tonumber(redis.call('GET', P .. 'bytes'))
  end
  if total > max_bytes and running then return 'log_full' end
end
if seq > soft_cap and running then return 'event_limit' end
return 'ok'
`

// ARGV: prefix, run_id, user, after_seq, maxEvents, maxBytes, retentionMs, replayGraceMs
// → {'nf'} | {'exp', last} | {'after', last} | {'ok', thread, agent, status, started, ended, last, seq1, type1, frame1, …}
const READ_LUA = PRELUDE + `
local id, user, after, max_events, max_bytes = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ret_ms, grace = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local found = locate(id, user, now)
if found[1] ~= 'ok' then return found end
local f = found[2]
if max_events > 0 and f[4] ~= 'running' then
  -- a replay in progress keeps a finished run at least replayGraceMs past each read (as in memory): its keys
  -- live on, and the sweep and the byte budget (oldest end first) count it as ended now
  local h = P .. 'run:' .. id
  local ttl = redis.call('PTTL', h)
  if ttl >= 0 and ttl < grace then
    redis.call('PEXPIRE', h, grace)
    redis.call('PEXPIRE', h .. ':s', grace)
    local info = redis.call('HGET', P .. 'endinfo', id)
    if info then
      local e = split(info)
      redis.call('ZADD', P .. 'ended', redis.call('INCR', P .. 'endseq'), id)
      redis.call('HSET', P .. 'endinfo', id, e[1] .. '\\n' .. e[2] .. '\\n' .. e[3] .. '\\n' .. (now + grace - ret_ms))
    end
  end
end
local last = tonumber(f[7])
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

// ARGV: prefix, user, thread ('' = any), status ('' = any), limit, retentionMs, tombstoneMs, maxTombstones
// → {run_id, thread, agent, status, started, ended, last, …} newest first
const LIST_LUA = PRELUDE + `
local user, thread, status, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
sweep(now_ms(), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
local out = {}
local n = 0
for _, id in ipairs(redis.call('ZREVRANGE', P .. 'user:' .. user, 0, -1)) do
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

// ARGV: prefix, run_id, ended_at, retentionMs, writer ('' = unfenced) → 'ended' | 'no' | 'fenced'
const RELEASE_LUA = PRELUDE + `
local id, ts, ret_ms, writer = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local h = P .. 'run:' .. id
if redis.call('HGET', h, 'st') ~= 'running' then return 'no' end
if writer ~= '' then
  local o = redis.call('HGET', h, 'o')
  if o and o ~= writer then return 'fenced' end
end
end_run(id, h, 'cancelled', ts, now_ms(), ret_ms)
redis.call('PUBLISH', P .. 'notes', id .. ' ' .. redis.call('HGET', h, 'l'))
return 'ended'
`

// ARGV: prefix, run_id, user, last_seq: a run whose buffered events were dropped is remembered as expired
const LOST_LUA = PRELUDE + `
local id, user, last, tomb_ms = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local h = P .. 'run:' .. id
local now = now_ms()
local old = redis.call('HMGET', h, 'u', 'b')
if old[1] then
  unindex(id, h)
  redis.call('DEL', h, h .. ':s')
  redis.call('ZREM', P .. 'user:' .. old[1], id)
  redis.call('DECRBY', P .. 'bytes', old[2])
  redis.call('DECR', P .. 'runs')
  redis.call('ZREM', P .. 'ended', id)
  redis.call('HDEL', P .. 'endinfo', id)
end
tomb_add(id, user, last, now, tomb_ms)
redis.call('PUBLISH', P .. 'notes', id .. ' ' .. last)
return 'ok'
`

// ARGV: prefix, retentionMs, tombstoneMs, maxTombstones → {runs, ended, bytes, tombstones, evicted}
const SWEEP_LUA = PRELUDE + `
sweep(now_ms(), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
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
const sweepScript = script<ReadonlyArray<string>>(SWEEP_LUA)
const epochScript = script<string>(EPOCH_LUA)

// ---------------------------------------------------------------------------------------------

interface Waiter {
  readonly after_seq: number
  readonly wake: () => void
}

interface Pending {
  readonly user_id: string
  readonly events: Array<{ readonly event: AgentEvent; readonly frame: string }>
  /** The buffer overflowed: the run's log is given up; once Redis is back it is recorded as expired at `last_seq`. */
  lost: boolean
  last_seq: number
  /** The run's emitter is gone: end the run (`release`) once its events are in. */
  released: boolean
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
}) =>
  Effect.gen(function*() {
    const redis = yield* Redis.Redis
    const { client } = yield* NodeRedis.NodeRedis
    const { settings } = options
    const P = options.keyPrefix ?? "agentwire:"
    const bufferBound = options.bufferEvents ?? DEFAULT_BUFFER_EVENTS
    const writer = options.instanceId ?? ""
    // runs another instance took over from this one (said once each; bounded: a paused instance has few)
    const fencedRuns = new Set<string>()
    const fenced = (run_id: string) =>
      Effect.suspend(() => {
        if (fencedRuns.has(run_id)) return Effect.void
        if (fencedRuns.size >= 10_000) fencedRuns.clear()
        fencedRuns.add(run_id)
        return Effect.logWarning("another instance took this run over (this instance's lease had expired): its further events are dropped").pipe(
          Effect.annotateLogs({ run_id, instance_id: writer })
        )
      })
    const softCap = settings.maxEventsPerRun - terminalReserve(settings.maxEventsPerRun)
    const run = <R>(s: Redis.Script<{ params: Args; result: R }>, ...args: Args) => redis.eval(s)(P, ...args)

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
    client.on("ready", () => {
      wakeAll()
      runFork(refreshEpoch)
    })

    // one subscriber per instance: notes `<run_id> <seq>` wake this instance's waiters
    yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const subscriber = client.duplicate()
          subscriber.on("error", () => {}) // reported by the main client; node-redis rethrows unhandled errors
          subscriber.on("ready", () => {
            // (re)subscribed: whatever was published meanwhile may be lost; everyone looks again
            wakeAll()
            runFork(refreshEpoch)
          })
          await subscriber.connect()
          await subscriber.subscribe(P + "notes", (message) => {
            const space = message.lastIndexOf(" ")
            wake(message.slice(0, space), Number(message.slice(space + 1)))
          })
          return subscriber
        },
        catch: (cause) => new Redis.RedisError({ cause })
      }),
      (subscriber) => Effect.sync(() => subscriber.destroy())
    )

    const unavailable = (error: Redis.RedisError) => new RunLogUnavailableError({ reason: redisStartReason(error.cause) })

    const toResult = (answer: string, run_id: string): AppendResult => {
      if (answer === "dup" || answer === "lost") return "ok"
      // taken over: not logged, so not delivered either (like an event past the hard cap)
      if (answer === "fenced") return "refused"
      if (answer === "ok" || answer === "event_limit" || answer === "log_full" || answer === "refused") {
        if (answer !== "refused") wake(run_id, Number.MAX_SAFE_INTEGER)
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
        writer
      )
    }

    /** Keeps an event for later; false when the buffer is full (the run's log is then given up). */
    const bufferEvent = (event: AgentEvent, frame: string): boolean => {
      let p = pending.get(event.run_id)
      if (p === undefined) pending.set(event.run_id, p = { user_id: event.user_id, events: [], lost: false, last_seq: 0, released: false })
      p.last_seq = event.seq
      if (p.lost) return false
      if (buffered >= bufferBound) {
        p.lost = true
        buffered -= p.events.length
        p.events.length = 0
        return false
      }
      p.events.push({ event, frame })
      buffered++
      return true
    }

    const isOrderError = (error: Redis.RedisError) => String(error.cause).includes("RUNLOG_ORDER")

    const append = (event: AgentEvent, frame: string): Effect.Effect<AppendResult> =>
      Effect.suspend(() => {
        if (pending.has(event.run_id) || !client.isReady) {
          return Effect.succeed<AppendResult>(bufferEvent(event, frame) ? "ok" : "log_unavailable")
        }
        return sendAppend(event, frame).pipe(
          Effect.tap((answer) => answer === "fenced" ? fenced(event.run_id) : Effect.void),
          Effect.map((answer) => toResult(answer, event.run_id)),
          Effect.catch((error) =>
            isOrderError(error)
              ? Effect.die(error)
              : Effect.succeed<AppendResult>(bufferEvent(event, frame) ? "ok" : "log_unavailable")
          )
        )
      })

    // buffered events go out in order, run by run, while Redis answers
    const flushRun = (run_id: string, p: Pending): Effect.Effect<void, Redis.RedisError> =>
      Effect.gen(function*() {
        while (p.events.length > 0) {
          const { event, frame } = p.events[0]!
          const answer = yield* sendAppend(event, frame).pipe(
            Effect.catchIf(isOrderError, (error) =>
              // cannot happen unless the store lost part of the run: give its log up
              Effect.as(Effect.logError("run log out of order after an outage", error), "gap"))
          )
          if (answer === "fenced") {
            // another instance closed the run meanwhile: what waited here is dropped
            yield* fenced(run_id)
            buffered -= p.events.length
            p.events.length = 0
            p.released = false
            break
          }
          if (answer === "gap") {
            p.lost = true
            buffered -= p.events.length
            p.events.length = 0
            break
          }
          p.events.shift()
          buffered--
          if (answer !== "refused") wake(run_id, event.seq)
        }
        if (p.lost) {
          yield* run(lostScript, run_id, p.user_id, p.last_seq, settings.tombstoneMs)
          wake(run_id, -1)
        } else if (p.released) {
          yield* releaseNow(run_id)
        }
        if (p.events.length === 0) pending.delete(run_id)
      })
    const releaseNow = (run_id: string) =>
      run(releaseScript, run_id, new Date().toISOString(), settings.retentionMs, writer).pipe(
        Effect.tap(() => Effect.sync(() => wake(run_id, -1)))
      )
    const flush = Effect.suspend(() =>
      pending.size === 0 || !client.isReady
        ? Effect.void
        : Effect.forEach(Array.from(pending), ([run_id, p]) => flushRun(run_id, p), { discard: true }).pipe(Effect.ignore)
    )
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(FLUSH_INTERVAL_MS), flush)))

    const statsNow = run(sweepScript, settings.retentionMs, settings.tombstoneMs, MAX_TOMBSTONES).pipe(
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

    const read = (user_id: string, run_id: string, after_seq: number, limits: { readonly maxEvents: number; readonly maxBytes: number }) =>
      run(readScript, run_id, user_id, Math.max(0, after_seq), limits.maxEvents, limits.maxBytes, settings.retentionMs, REPLAY_GRACE_MS).pipe(
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
        read(user_id, run_id, 0, { maxEvents: 0, maxBytes: 0 }),
        (page) => Effect.succeed(page.summary)
      ).pipe(Effect.catchTag("AfterSeqError", (e) => Effect.die(e)))

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
          if (mine !== undefined && mine.size === 0) waiters.delete(run_id)
        }
        // registered before the first look, so an append between the two still wakes it
        let mine = waiters.get(run_id)
        if (mine === undefined) waiters.set(run_id, mine = new Set())
        mine.add(waiter)
        runFork(check)
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
          MAX_TOMBSTONES
        ).pipe(
          Effect.mapError(unavailable),
          Effect.map((r) => {
            const out: Array<RunSummary> = []
            for (let i = 0; i + 6 < r.length; i += 7) out.push(summaryFrom(r[i]!, user_id, r, i + 1))
            return out
          })
        )
      }),
      stats: statsNow.pipe(
        Effect.orElseSucceed(() => lastStats),
        Effect.map((s): RunLogStats => ({ ...s, store: { up: client.isReady, bufferedEvents: buffered } }))
      ),
      read: Effect.fn("RunLog.read")(read),
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
  const connection = NodeRedis.layer({
    url,
    // commands fail at once while disconnected: appends then buffer, reads answer "unavailable"
    disableOfflineQueue: true,
    socket: {
      connectTimeout: 5000,
      // the first connection fails at once (a startup error); later ones retry forever
      reconnectStrategy: (retries: number, cause: Error) =>
        started ? Math.min(50 * 2 ** Math.min(retries, 6), 2000) + Math.floor(Math.random() * 100) : cause
    }
  })
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
