/**
 * `RunAdmission` shared through Redis: the per-user concurrent-run limit and
 * idempotent starts hold across every instance on one Redis.
 *
 * Per user (keys share the hash tag `{u:<user_id>}`, see `RedisInstance.keys`):
 * - `…:slots`, a ZSET of the user's admitted runs scored by their expiry (ms,
 *   Redis clock), and `…:runs`, a HASH run_id → `instance_id \t thread_id \t
 *   agent_name` (who executes it: stop-anywhere reads it);
 * - `…:req:<request_id>`, a HASH (fingerprint, run) expiring with the
 *   idempotency window, indexed by `…:reqs` (a ZSET request_id → expiry), so
 *   that `forgetUser` (an erase of the user's data) can forget them all.
 *
 * One Lua script per start does, atomically: the repeated-`request_id` check
 * (`Duplicate` or `request_id_conflict`), dropping the user's expired slots,
 * the per-user limit (`run_limit`), then takes the slot and remembers the
 * request. A slot expires `slotTtlMs` after it was taken or last renewed; the
 * owning instance renews its slots every `slotTtlMs / 3` and releases each
 * when its run ends, so the slots of an instance that died free themselves
 * within `slotTtlMs`. (A renewal re-adds a slot that expired meanwhile, e.g.
 * after a long pause: the run still executes, so it counts again.)
 *
 * Per instance, not shared: admission open/closed (`close` closes this
 * instance only), the process cap `maxRuns` (`server_busy`, checked in the
 * same script, in the same order as in memory), the per-user start budget
 * (`rate_limited`, a local token bucket: with N instances behind a balancer a
 * user gets up to N budgets; `forgetUser` refills it on the instance it runs
 * on), and `activeRuns()` without a user (this instance's runs).
 * `activeRuns(user_id)` counts the user's live slots across the cluster.
 *
 * While Redis is unreachable a start is refused at once with `server_busy`
 * (`retry_after_ms` 1000, no `limit`); runs already admitted go on, and a
 * release that cannot reach Redis leaves the slot to expire. A start whose
 * script Redis did not answer within `ADMIT_TIMEOUT_MS` (stalled, or the
 * connection lost after it was written) is refused the same way, and since
 * the script may still run later, an undo (`undoAdmit`) is queued behind it
 * on the same connection: it frees that start's slot, forgets its request_id
 * and leaves a tombstone (`…:cancelled:<run_id>`) that the admit script
 * refuses. So a `server_busy` start never holds a slot nor answers a later
 * repeat of its request_id with `Duplicate`.
 *
 * Requires `RedisInstance`.
 *
 * @module
 */
import { Clock, Effect, Layer, Option, Schedule } from "effect"
import { Redis } from "effect/persistence"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { type Admission, AdmissionError, type AdmitOptions, RunAdmission, type RunLimits } from "../services/RunAdmission.ts"
import type { UserExecutionContext } from "../services/UserExecutionContext.ts"
import { DEFAULT_RUN_LIMITS } from "./AgentwireConfig.ts"
import * as RedisInstance from "./RedisInstance.ts"
import * as TokenBucket from "./TokenBucket.ts"

/** Default life of a slot without renewal, in ms (the default instance lease of issue 12). */
export const DEFAULT_SLOT_TTL_MS = 10_000

/** Longest wait for Redis during `admit`, in ms: past it the start is refused (`server_busy`). */
const ADMIT_TIMEOUT_MS = 2_000

/** Token buckets kept at most before full ones are swept. */
const MAX_BUCKETS = 100_000

const NOW = `${RedisInstance.LUA_NOW_MS}
local now = now_ms()`

/**
 * KEYS: slots, runs, req, reqs, cancelled. ARGV: run_id, thread_id, agent, instance, fingerprint|'', threadGiven,
 * maxPerUser, processFull, ttl, window, request_id. A start given up on (`cancelled` exists) answers `cancelled`.
 */
const admitScript = Redis.script(
  (
    keys: readonly [string, string, string, string, string],
    run_id: string,
    thread_id: string,
    agent: string,
    instance: string,
    fingerprint: string,
    threadGiven: boolean,
    maxPerUser: number,
    processFull: boolean,
    ttlMs: number,
    windowMs: number,
    request_id: string
  ) => [...keys, run_id, thread_id, agent, instance, fingerprint, threadGiven ? "1" : "0", maxPerUser, processFull ? "1" : "0", ttlMs, windowMs, request_id],
  {
    numberOfKeys: 5,
    lua: `${NOW}
if redis.call('EXISTS', KEYS[5]) == 1 then return {'cancelled'} end
if ARGV[5] ~= '' then
  local seen = redis.call('HMGET', KEYS[3], 'fp', 'run_id', 'thread_id', 'agent')
  if seen[1] then
    if seen[1] ~= ARGV[5] or (ARGV[6] == '1' and ARGV[2] ~= seen[3]) then return {'request_id_conflict'} end
    return {'duplicate', seen[2], seen[3], seen[4]}
  end
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #dead do
  redis.call('ZREM', KEYS[1], dead[i])
  redis.call('HDEL', KEYS[2], dead[i])
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[7]) then return {'run_limit'} end
if ARGV[8] == '1' then return {'server_busy'} end
local ttl = tonumber(ARGV[9])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4] .. '\\t' .. ARGV[2] .. '\\t' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], 'fp', ARGV[5], 'run_id', ARGV[1], 'thread_id', ARGV[2], 'agent', ARGV[3])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[10]))
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[10]), ARGV[11])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[10]))
end
return {'admitted'}`
  }
).withReturnType<ReadonlyArray<string>>()

/**
 * KEYS: slots, runs, req, reqs, cancelled. ARGV: run_id, request_id, tombstone ms. Undoes a start whose admit
 * script was given up on (timed out, interrupted, its connection lost) but may still run: frees its slot,
 * forgets its request_id if that start recorded it, and leaves a tombstone that makes the admit script refuse
 * that run_id should it arrive later still. Idempotent.
 */
export const UNDO_ADMIT_LUA = `redis.call('SET', KEYS[5], '1', 'PX', tonumber(ARGV[3]))
local freed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], 'run_id') == ARGV[1] then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[2])
end
return freed`

/** How long the tombstone of a start given up on lives at least, in ms (it outlives any late copy of its admit). */
export const UNDO_TOMBSTONE_MIN_MS = 60_000
/** Attempts to deliver an undo whose reply was lost (connection dropped after it was written), 1 s apart. */
const UNDO_ATTEMPTS = 30
const UNDO_RETRY_MS = 1_000

/**
 * Queues the undo of a start (`UNDO_ADMIT_LUA`) on `client` at once, with no
 * command timeout: node-redis writes a connection's commands in call order
 * (kept across a reconnect while not yet written), and Redis runs them in
 * that order, so an admit still queued or in flight on the same connection
 * runs first and is undone; one that reaches Redis later by another way
 * (a connection replaced meanwhile) finds the tombstone and is refused.
 * Returns the reply (1 when a slot was freed).
 */
export const undoAdmit = (
  client: RedisInstance.RedisClient,
  user_id: string,
  run_id: string,
  request_id: string,
  tombstoneMs: number
): Promise<unknown> =>
  client.sendCommand([
    "EVAL",
    UNDO_ADMIT_LUA,
    "5",
    RedisInstance.keys.userSlots(user_id),
    RedisInstance.keys.userRuns(user_id),
    RedisInstance.keys.userRequest(user_id, request_id),
    RedisInstance.keys.userRequests(user_id),
    RedisInstance.keys.userCancelled(user_id, run_id),
    run_id,
    request_id,
    String(Math.max(1, Math.ceil(tombstoneMs)))
  ], { timeout: 0 })

/** KEYS: slots, runs, req. ARGV: run_id, forgetRequest. Frees a slot (and, when asked, the request it remembered). */
const releaseScript = Redis.script(
  (keys: readonly [string, string, string], run_id: string, forgetRequest: boolean) => [...keys, run_id, forgetRequest ? "1" : "0"],
  {
    numberOfKeys: 3,
    lua: `redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] == '1' and redis.call('HGET', KEYS[3], 'run_id') == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 1`
  }
)

/**
 * KEYS: slots, runs, then each run's tombstone (`userCancelled`). ARGV: ttl, instance, then (run_id, thread_id,
 * agent) triples. Pushes the expiry of this instance's slots. A run with a tombstone is skipped: its admit was
 * given up on and undone, and a renewal built while that admit was pending may reach Redis after the undo (its
 * script loaded first, after an outage), where it would take the slot back for a whole ttl.
 */
export const renewScript = Redis.script(
  (user_id: string, ttlMs: number, instance: string, runs: ReadonlyArray<readonly [string, string, string]>) => [
    RedisInstance.keys.userSlots(user_id),
    RedisInstance.keys.userRuns(user_id),
    ...runs.map(([run_id]) => RedisInstance.keys.userCancelled(user_id, run_id)),
    ttlMs,
    instance,
    ...runs.flat()
  ],
  {
    numberOfKeys: (_user_id, _ttlMs, _instance, runs) => 2 + runs.length,
    lua: `${NOW}
local ttl = tonumber(ARGV[1])
local run = 0
for i = 3, #ARGV, 3 do
  run = run + 1
  if redis.call('EXISTS', KEYS[2 + run]) == 0 then
    redis.call('ZADD', KEYS[1], 'GT', now + ttl, ARGV[i])
    redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[2] .. '\t' .. ARGV[i + 1] .. '\t' .. ARGV[i + 2])
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1`
  }
)

/** KEYS: reqs. ARGV: the prefix of the user's request keys. Forgets every remembered request_id of the user. */
const forgetScript = Redis.script((reqs: string, requestPrefix: string) => [reqs, requestPrefix], {
  numberOfKeys: 1,
  lua: `local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #ids do redis.call('DEL', ARGV[1] .. ids[i]) end
redis.call('DEL', KEYS[1])
return #ids`
}).withReturnType<number>()

/** KEYS: slots. The user's live slots. */
const countScript = Redis.script((slots: string) => [slots], {
  numberOfKeys: 1,
  lua: `${NOW}
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')`
}).withReturnType<number>()

/**
 * Frees the slot of `run_id` of `user_id` whatever instance holds it (the
 * orphan recovery of `InstanceLeaseRedis` frees a dead instance's slots); a
 * remembered `request_id` is kept (a repeated start still gets `Duplicate`).
 */
export const freeSlot = (redis: Redis.Redis["Service"], user_id: string, run_id: string) =>
  redis.eval(releaseScript)(
    [RedisInstance.keys.userSlots(user_id), RedisInstance.keys.userRuns(user_id), RedisInstance.keys.userRequest(user_id, "-")],
    run_id,
    false
  )

/** Options of the Redis admission. */
export interface RedisAdmissionOptions {
  /** Life of a slot without renewal, in ms (default `DEFAULT_SLOT_TTL_MS`); renewed every third of it. */
  readonly slotTtlMs?: number | undefined
}

interface Owned {
  readonly context: UserExecutionContext
  readonly agent_name: string
}

/** Builds the Redis admission over `limits`; also returns `renew` (this instance's slots, now) for a lease to drive. */
export const makeWithRenew = (limits: RunLimits, options?: RedisAdmissionOptions) =>
  Effect.gen(function*() {
    const instance = yield* RedisInstance.RedisInstance
    const { redis } = instance
    const slotTtlMs = options?.slotTtlMs ?? DEFAULT_SLOT_TTL_MS
    if (!(slotTtlMs >= 30)) return yield* Effect.die(new Error(`slotTtlMs must be at least 30 ms, got ${slotTtlMs}`))
    let open = true
    // this instance's admitted runs, by user then run_id (total = the process's runs)
    const owned = new Map<string, Map<string, Owned>>()
    let total = 0
    const buckets = new Map<string, TokenBucket.TokenBucket>()

    const slotKeys = (user_id: string, request_id: string) =>
      [RedisInstance.keys.userSlots(user_id), RedisInstance.keys.userRuns(user_id), RedisInstance.keys.userRequest(user_id, request_id)] as const
    const admitKeys = (user_id: string, run_id: string, request_id: string) =>
      [...slotKeys(user_id, request_id), RedisInstance.keys.userRequests(user_id), RedisInstance.keys.userCancelled(user_id, run_id)] as const

    // a start given up on while its admit script may still run (Redis stalled past ADMIT_TIMEOUT_MS, the fiber
    // interrupted, the connection lost after it was written): it was refused, so it must hold nothing, whenever
    // the script runs. Its undo is queued behind it on the same connection, at once (see `undoAdmit`)
    let scopeOpen = true
    yield* Effect.addFinalizer(() => Effect.sync(() => void (scopeOpen = false)))
    const runSync = Effect.runSyncWith(yield* Effect.context<never>())
    const tombstoneMs = Math.max(UNDO_TOMBSTONE_MIN_MS, limits.idempotencyWindowMs, 3 * slotTtlMs)
    const undo = (context: UserExecutionContext) => {
      let attempts = 0
      const attempt = () => {
        undoAdmit(instance.client, context.user_id, context.run_id, context.request_id, tombstoneMs).then(
          () => undefined,
          (cause: unknown) => {
            // written, then the connection dropped before the reply (or refused while closing): sent again,
            // it is idempotent; queued commands survive a reconnect, so this is rare
            if (!scopeOpen || ++attempts >= UNDO_ATTEMPTS) {
              runSync(Effect.logWarning("could not undo a refused start in Redis; its slot expires by itself", String(cause)).pipe(
                Effect.annotateLogs({ run_id: context.run_id, user_id: context.user_id })
              ))
              return
            }
            setTimeout(attempt, UNDO_RETRY_MS).unref()
          }
        )
      }
      attempt()
    }

    const unavailable = new AdmissionError({ reason: "server_busy", retry_after_ms: 1000 })

    const takeStart = (now: number, user_id: string): number => {
      if (limits.runStartsPerSecond <= 0) return 0
      let bucket = buckets.get(user_id)
      if (bucket === undefined) {
        bucket = TokenBucket.make(limits.runStartsPerSecond, limits.runStartBurst, now)
        buckets.set(user_id, bucket)
      }
      const retry = bucket.take(now)
      if (buckets.size > MAX_BUCKETS) for (const [user, b] of buckets) if (b.isFull(now)) buckets.delete(user)
      return retry
    }

    const forget = (context: UserExecutionContext) => {
      const mine = owned.get(context.user_id)
      if (mine === undefined || !mine.delete(context.run_id)) return false
      if (mine.size === 0) owned.delete(context.user_id)
      total--
      return true
    }

    const free = (context: UserExecutionContext, forgetRequest: boolean) =>
      redis.eval(releaseScript)(slotKeys(context.user_id, context.request_id), context.run_id, forgetRequest).pipe(
        Effect.timeout(ADMIT_TIMEOUT_MS),
        Effect.catchCause((cause) =>
          Effect.logWarning("could not free an admission slot in Redis; it expires by itself", cause).pipe(
            Effect.annotateLogs({ run_id: context.run_id, user_id: context.user_id })
          )
        )
      )

    const admit = (context: UserExecutionContext, agent_name: string, admitOptions?: AdmitOptions) =>
      Effect.gen(function*() {
        if (!open) return yield* new AdmissionError({ reason: "shutting_down" })
        if (!instance.isReady()) return yield* unavailable
        // the process cap is this instance's; its place in the order of checks is kept by the script
        const processFull = total >= limits.maxRuns
        const fingerprint = admitOptions?.idempotency?.fingerprint
        // reserved before the round trip, so concurrent starts on this instance cannot pass the cap together
        const entry: Owned = { context, agent_name }
        if (!processFull) {
          let mine = owned.get(context.user_id)
          if (mine === undefined) owned.set(context.user_id, mine = new Map())
          mine.set(context.run_id, entry)
          total++
        }
        const answer = yield* redis.eval(admitScript)(
          admitKeys(context.user_id, context.run_id, context.request_id),
          context.run_id,
          context.thread_id,
          agent_name,
          instance.instance_id,
          fingerprint ?? "",
          admitOptions?.idempotency?.threadGiven === true,
          limits.maxRunsPerUser,
          processFull,
          slotTtlMs,
          limits.idempotencyWindowMs,
          context.request_id
        ).pipe(
          Effect.timeout(ADMIT_TIMEOUT_MS),
          Effect.tapCause((cause) => Effect.logWarning("admission could not reach Redis; start refused", cause)),
          // the script may still run (or have run) in Redis: undone, whatever the order
          Effect.onError(() =>
            Effect.sync(() => {
              forget(context)
              undo(context)
            })
          ),
          Effect.orElseSucceed(() => ["unavailable"] as ReadonlyArray<string>)
        )
        const verdict = answer[0]
        if (verdict !== "admitted") {
          forget(context)
          switch (verdict) {
            case "duplicate":
              return {
                _tag: "Duplicate",
                run: { run_id: answer[1]!, thread_id: answer[2]!, request_id: context.request_id, agent_name: answer[3]! }
              } satisfies Admission
            case "request_id_conflict":
              return yield* new AdmissionError({ reason: "request_id_conflict" })
            case "run_limit":
              return yield* new AdmissionError({ reason: "run_limit", limit: limits.maxRunsPerUser })
            case "server_busy":
              return yield* new AdmissionError({ reason: "server_busy", limit: limits.maxRuns, retry_after_ms: 1000 })
            default:
              return yield* unavailable
          }
        }
        // the budget is spent last: a refused start costs nothing (and gives its slot back)
        if (admitOptions?.rateLimited === true) {
          const retry_after_ms = takeStart(yield* Clock.currentTimeMillis, context.user_id)
          if (retry_after_ms > 0) {
            forget(context)
            yield* free(context, fingerprint !== undefined)
            return yield* new AdmissionError({ reason: "rate_limited", retry_after_ms })
          }
        }
        let released = false
        const admission: Admission = {
          _tag: "Admitted",
          release: Effect.suspend(() => {
            if (released) return Effect.void
            released = true
            forget(context)
            return free(context, false)
          })
        }
        return admission
      })

    /** Pushes the expiry of every slot this instance holds (one script per user). */
    const renew: Effect.Effect<void> = Effect.suspend(() =>
      Effect.forEach(Array.from(owned), ([user_id, runs]) =>
        redis.eval(renewScript)(
          user_id,
          slotTtlMs,
          instance.instance_id,
          Array.from(runs.values(), (o) => [o.context.run_id, o.context.thread_id, o.agent_name] as const)
        ), { discard: true, concurrency: 16 }).pipe(
        Effect.timeout(slotTtlMs),
        Effect.catchCause((cause) => Effect.logWarning("could not renew admission slots in Redis", cause))
      )
    )

    const activeRuns = (user_id?: string) =>
      user_id === undefined
        ? Effect.sync(() => total)
        : redis.eval(countScript)(RedisInstance.keys.userSlots(user_id)).pipe(
          Effect.timeout(ADMIT_TIMEOUT_MS),
          // without Redis: what this instance knows
          Effect.orElseSucceed(() => owned.get(user_id)?.size ?? 0)
        )

    const service = RunAdmission.of({
      limits,
      admit: Effect.fn("RunAdmission.admit")(admit),
      close: Effect.sync(() => {
        open = false
      }),
      isOpen: Effect.sync(() => open),
      activeRuns,
      // an erase: the user's remembered request_ids (cluster-wide) and this instance's start budget
      forgetUser: Effect.fn("RunAdmission.forgetUser")((user_id: string) =>
        Effect.andThen(
          Effect.sync(() => void buckets.delete(user_id)),
          redis.eval(forgetScript)(RedisInstance.keys.userRequests(user_id), RedisInstance.keys.userRequest(user_id, "")).pipe(
            Effect.timeout(ADMIT_TIMEOUT_MS),
            Effect.catchCause((cause) =>
              Effect.logWarning("could not forget a user's request ids in Redis; they expire with the idempotency window", cause).pipe(
                Effect.annotateLogs({ user_id })
              )
            ),
            Effect.asVoid
          )
        ))
    })
    return { service, renew, slotTtlMs }
  })

/** Builds the Redis admission and renews this instance's slots every third of their life, until the scope closes. */
export const make = (limits: RunLimits, options?: RedisAdmissionOptions) =>
  Effect.gen(function*() {
    const { renew, service, slotTtlMs } = yield* makeWithRenew(limits, options)
    yield* Effect.forkScoped(Effect.repeat(renew, Schedule.spaced(Math.max(10, Math.floor(slotTtlMs / 3)))))
    return service
  })

/** Redis admission with explicit limits; requires `RedisInstance`. */
export const layer = (limits: RunLimits, options?: RedisAdmissionOptions): Layer.Layer<RunAdmission, never, RedisInstance.RedisInstance> =>
  Layer.effect(RunAdmission, make(limits, options))

/**
 * Redis admission with the limits of `AgentwireConfig` when one is provided,
 * else the defaults; a slot lives as long as an instance lease
 * (`instanceLeaseMs`) unless `options.slotTtlMs` says otherwise.
 */
export const layerConfig = (options?: RedisAdmissionOptions): Layer.Layer<RunAdmission, never, RedisInstance.RedisInstance> =>
  Layer.effect(
    RunAdmission,
    Effect.flatMap(Effect.serviceOption(AgentwireConfig), (config) =>
      Option.match(config, {
        onNone: () => make(DEFAULT_RUN_LIMITS, options),
        onSome: (c) => make(c.runLimits, { slotTtlMs: options?.slotTtlMs ?? c.instanceLeaseMs })
      }))
  )
