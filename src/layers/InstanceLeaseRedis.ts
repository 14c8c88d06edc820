/**
 * Instance leases on Redis, and the recovery of a lost instance's runs.
 *
 * **Lease.** Each instance holds a lease: its score in the sorted set
 * `agentwire:instances` (instance id → lease expiry, ms, Redis clock),
 * renewed every third of `leaseMs` (`AGENTWIRE_INSTANCE_LEASE_MS`), at
 * once when its Redis connection comes back, and at once again after a
 * renewal answered more than `leaseMs / 10` after it was sent (it proves the
 * lease only from when it was sent). An instance that stops renewing
 * (killed, hung, paused, cut off from Redis) loses its lease `leaseMs` after
 * its last renewal at the latest.
 *
 * **Recovery.** Every instance looks for expired leases every
 * `min(leaseMs / 4, 500)` ms. The open runs of each instance are indexed by
 * the run log (`RunLogRedis` with `instanceId`: `agentwire:instance:<id>:runs`,
 * run → user). For an instance whose lease expired, one survivor (a claim key
 * `agentwire:instance:<id>:recovery`, `SET NX PX leaseMs`) takes each of its
 * runs over in one Lua script — only while the lease is still expired and the
 * run still open and owned by the dead instance — by making itself the run's
 * owner in the log. From then on the log refuses the dead instance's appends
 * (fencing: an instance that was only paused cannot add to a run another
 * instance closed). The survivor then reads the run's log and closes it as
 * the protocol requires: open tool calls (`tool_executing` without
 * `tool_completed`) get `tool_completed {success: false, results: {status:
 * "cancelled"}}`, open sub-agents (`agent_started` at depth ≥ 1 without its
 * `agent_completed`) get `agent_completed {status: "cancelled"}`, innermost
 * first (deepest first; at one depth tool calls before their agent, the latest
 * opened first); then `agent_error {code: "INSTANCE_LOST"}` and
 * `agent_completed {status: "failed"}` at depth 0. Each event is appended to
 * the run's log (so resume and SSE followers get it) and emitted through the
 * bridge (so every connection of the user, on every instance, gets it); the
 * run's admission slot is freed before the first of them. Once the dead instance has no open run
 * left, its lease entry and index are removed.
 *
 * A run taken over but not closed (Redis went away meanwhile) is retried on
 * the next pass, and so is a takeover Redis did not answer in time (it may
 * still run, moving the run out of the lost instance's index: asked again,
 * the script answers `ok` for a run this instance already took); if the
 * survivor dies too, the run sits in its own index and the next survivor
 * recovers it. Closing is idempotent: it is computed from
 * the log each time.
 *
 * **Outage.** Nothing is recovered while this instance's Redis connection is
 * down, nor during the first `leaseMs` after it (re)connected, so that the
 * other instances, which lost their connection too, have renewed their
 * leases before anyone judges them. A run admitted by a dead instance that
 * logged no event yet is not in the index: its slot expires by itself
 * (`RunAdmissionRedis`, slot life = `leaseMs`).
 *
 * **Losing one's own lease.** An instance that could not renew its lease
 * within `leaseMs` of the last renewal that reached Redis (timed from when
 * that renewal was sent, so never later than Redis's own expiry) knows that
 * another instance may be closing its runs: it tells the `onLost` handlers
 * (the engine stops every run it executes with `instance_lost`: each ends
 * with `agent_error {code: "INSTANCE_LOST"}` and `agent_completed {status:
 * "failed"}` on this instance's sockets, frees its fiber and slot, and sends
 * nothing more). Those closing events go to the log like any other: fenced
 * (dropped) when another instance took the run over, appended when nobody
 * did (e.g. Redis itself was down for everyone).
 *
 * **Shutdown.** A graceful stop removes the lease (after the engine stopped
 * its runs); should open runs remain in its index, the lease is set to expire
 * at once instead, so that another instance closes them.
 *
 * Requires `RedisInstance`, `RunLog` (the Redis one, built with this
 * instance's id) and `WebSocketBridge`.
 *
 * @module
 */
import { Context, Effect, Layer, Option, Schedule, type Scope, Semaphore } from "effect"
import { Redis } from "effect/persistence"
import type { AgentEvent, AgentEventBody } from "../protocol/Protocol.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { ConversationStore } from "../services/ConversationStore.ts"
import { RunLog } from "../services/RunLog.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"
import { DEFAULT_INSTANCE_LEASE_MS, MIN_INSTANCE_LEASE_MS } from "./AgentwireConfig.ts"
import * as RedisInstance from "./RedisInstance.ts"
import { freeSlot } from "./RunAdmissionRedis.ts"

/** The `agent_error` code of a run whose instance was lost. */
export const INSTANCE_LOST = "INSTANCE_LOST"

/** Counters of this instance's lease and recoveries (monotonic since start). */
export interface InstanceLeaseStats {
  /** Renewals that reached Redis. */
  renewals: number
  /** Renewals that found the lease already expired or gone (after the first). */
  lapses: number
  /** Instances whose runs this instance recovered (fully). */
  instancesRecovered: number
  /** Runs this instance closed with `INSTANCE_LOST`. */
  runsClosed: number
}

export class InstanceLease extends Context.Service<InstanceLease, {
  readonly instance_id: string
  /** Life of the lease without renewal, in ms. */
  readonly leaseMs: number
  /** Renews the lease now (also done every `leaseMs / 3`). */
  readonly renew: Effect.Effect<void>
  /**
   * One recovery pass now, without the reconnect grace: closes the open runs of
   * every instance whose lease has expired. Returns the run ids closed.
   */
  readonly recover: Effect.Effect<ReadonlyArray<string>>
  readonly stats: InstanceLeaseStats
  /**
   * True once this instance knows its lease has expired: no renewal reached
   * Redis within `leaseMs` of the last one that did (timed from when that one
   * was sent). False again after the next successful renewal.
   */
  readonly expired: () => boolean
  /**
   * Calls `handler` each time this instance learns its lease expired (once per
   * lapse; `leaseMs` after the last renewal that reached Redis, checked every
   * `min(leaseMs / 10, 100)` ms), until the scope closes. The engine stops its
   * runs then (`instance_lost`): another instance may have closed them.
   */
  readonly onLost: (handler: () => void) => Effect.Effect<void, never, Scope.Scope>
}>()("agentwire/InstanceLease") {}

/** Options of the lease layer. */
export interface InstanceLeaseOptions {
  /** Life of the lease without renewal, in ms (default `DEFAULT_INSTANCE_LEASE_MS`, at least `MIN_INSTANCE_LEASE_MS`). */
  readonly leaseMs?: number | undefined
  /** Prefix of the keys (default `agentwire:`; must be the run log's prefix). */
  readonly keyPrefix?: string | undefined
}

// ---------------------------------------------------------------------------------------------
// Lua. ARGV[1] is the key prefix.

const PRELUDE = `
local P = ARGV[1]
${RedisInstance.LUA_NOW_MS}
local function alive(id, now)
  local score = redis.call('ZSCORE', P .. 'instances', id)
  return score and tonumber(score) > now
end
`

// ARGV: prefix, id, leaseMs → 1 (the lease was live) | 2 (it had expired) | 0 (there was none)
const RENEW_LUA = PRELUDE + `
local now = now_ms()
local prev = redis.call('ZSCORE', P .. 'instances', ARGV[2])
redis.call('ZADD', P .. 'instances', now + tonumber(ARGV[3]), ARGV[2])
if not prev then return 0 end
if tonumber(prev) > now then return 1 end
return 2
`

// ARGV: prefix, self → ids whose lease expired (at most 100)
const EXPIRED_LUA = PRELUDE + `
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'instances', '-inf', now_ms(), 'LIMIT', 0, 100)) do
  if id ~= ARGV[2] then out[#out + 1] = id end
end
return out
`

// ARGV: prefix, dead, self, lockMs → 1 when this instance recovers dead now
const CLAIM_LUA = PRELUDE + `
if alive(ARGV[2], now_ms()) then return 0 end
local lock = P .. 'instance:' .. ARGV[2] .. ':recovery'
if redis.call('SET', lock, ARGV[3], 'PX', tonumber(ARGV[4]), 'NX') then return 1 end
if redis.call('GET', lock) == ARGV[3] then
  redis.call('PEXPIRE', lock, tonumber(ARGV[4]))
  return 1
end
return 0
`

// ARGV: prefix, dead, self, run_id → {'ok', user} | {'alive'} | {'gone'}. Idempotent for self: a run self
// already took over (an earlier takeover whose answer was lost) answers 'ok' again, even if dead is back
const TAKEOVER_LUA = PRELUDE + `
local dead, self, id = ARGV[2], ARGV[3], ARGV[4]
local h = P .. 'run:' .. id
local f = redis.call('HMGET', h, 'o', 'st', 'u')
if f[1] == self and f[2] == 'running' then
  redis.call('HDEL', P .. 'instance:' .. dead .. ':runs', id)
  return {'ok', f[3]}
end
if alive(dead, now_ms()) then return {'alive'} end
redis.call('HDEL', P .. 'instance:' .. dead .. ':runs', id)
if f[1] ~= dead or f[2] ~= 'running' then return {'gone'} end
redis.call('HSET', h, 'o', self)
redis.call('HSET', P .. 'instance:' .. self .. ':runs', id, f[3])
return {'ok', f[3]}
`

// ARGV: prefix, dead → 1 when dead's entry and index are gone (nothing left to recover)
const DONE_LUA = PRELUDE + `
local dead = ARGV[2]
local index = P .. 'instance:' .. dead .. ':runs'
if redis.call('HLEN', index) > 0 or alive(dead, now_ms()) then return 0 end
redis.call('ZREM', P .. 'instances', dead)
redis.call('DEL', index, P .. 'instance:' .. dead .. ':recovery')
return 1
`

// ARGV: prefix, id → 1 when the lease is removed; 0 when runs remain (the lease then expires at once)
const LEAVE_LUA = PRELUDE + `
local id = ARGV[2]
local index = P .. 'instance:' .. id .. ':runs'
if redis.call('HLEN', index) == 0 then
  redis.call('ZREM', P .. 'instances', id)
  redis.call('DEL', index)
  return 1
end
redis.call('ZADD', P .. 'instances', now_ms(), id)
return 0
`

type Args = ReadonlyArray<string | number>
const script = <R>(lua: string) => Redis.script((...args: Args) => args, { lua, numberOfKeys: 0 }).withReturnType<R>()
const renewScript = script<number>(RENEW_LUA)
const expiredScript = script<ReadonlyArray<string>>(EXPIRED_LUA)
const claimScript = script<number>(CLAIM_LUA)
const takeoverScript = script<ReadonlyArray<string>>(TAKEOVER_LUA)
const doneScript = script<number>(DONE_LUA)
const leaveScript = script<number>(LEAVE_LUA)
/** How long a graceful stop waits for Redis to take the lease back, in ms (then it expires on its own). */
const LEAVE_TIMEOUT_MS = 1_000

// ---------------------------------------------------------------------------------------------
// What is open in a run, from its log

interface OpenTool {
  readonly kind: "tool"
  readonly order: number
  readonly depth: number
  readonly agent_name: string
  readonly tool_name: string
  readonly execution_id: string
  readonly startedMs: number
}
interface OpenAgent {
  readonly kind: "agent"
  readonly order: number
  readonly depth: number
  readonly agent_name: string
  readonly startedMs: number
}

/** What a run's events leave open. */
export interface OpenParts {
  /** The root agent's name and when it started (ms since epoch; NaN if unknown). */
  readonly root: { readonly agent_name: string; readonly startedMs: number }
  /** Open tool calls and sub-agents, in the order they must be closed (innermost first). */
  readonly open: ReadonlyArray<OpenTool | OpenAgent>
  /** The root `agent_completed` is in the log: nothing to close. */
  readonly ended: boolean
}

/** Derives what `events` (one run's log, in seq order) leave open. */
export const openParts = (events: ReadonlyArray<AgentEvent>, fallbackAgent: string): OpenParts => {
  let root = { agent_name: fallbackAgent, startedMs: Number.NaN }
  let ended = false
  const tools = new Map<string, OpenTool>()
  const agents: Array<OpenAgent> = []
  events.forEach((event, order) => {
    const at = Date.parse(event.timestamp)
    switch (event.type) {
      case "agent_started":
        if (event.depth === 0) root = { agent_name: event.agent_name, startedMs: at }
        else agents.push({ kind: "agent", order, depth: event.depth, agent_name: event.agent_name, startedMs: at })
        break
      case "agent_completed":
        if (event.depth === 0) ended = true
        else {
          // the latest open one of that name at that depth
          for (let i = agents.length - 1; i >= 0; i--) {
            if (agents[i]!.depth === event.depth && agents[i]!.agent_name === event.agent_name) {
              agents.splice(i, 1)
              break
            }
          }
        }
        break
      case "tool_executing":
        tools.set(event.execution_id, {
          kind: "tool",
          order,
          depth: event.depth,
          agent_name: event.agent_name,
          tool_name: event.tool_name,
          execution_id: event.execution_id,
          startedMs: at
        })
        break
      case "tool_completed":
        tools.delete(event.execution_id)
        break
    }
  })
  const open = [...tools.values(), ...agents].sort((a, b) =>
    b.depth - a.depth || (a.kind === b.kind ? b.order - a.order : a.kind === "tool" ? -1 : 1)
  )
  return { root, open, ended }
}

const elapsed = (startedMs: number, nowMs: number) => (Number.isFinite(startedMs) ? Math.max(0, nowMs - startedMs) : 0)

/** The closing event bodies of a lost run, in order (without stamps). */
export const closingBodies = (
  parts: OpenParts,
  instance_id: string,
  nowMs: number
): ReadonlyArray<{ readonly agent_name: string; readonly depth: number; readonly body: AgentEventBody }> => {
  const out: Array<{ agent_name: string; depth: number; body: AgentEventBody }> = []
  for (const part of parts.open) {
    const duration_ms = elapsed(part.startedMs, nowMs)
    if (part.kind === "tool") {
      out.push({
        agent_name: part.agent_name,
        depth: part.depth,
        body: {
          type: "tool_completed",
          tool_name: part.tool_name,
          execution_id: part.execution_id,
          success: false,
          results: { status: "cancelled", error: "cancelled: the instance running it was lost" },
          duration_ms
        }
      })
    } else {
      out.push({
        agent_name: part.agent_name,
        depth: part.depth,
        body: { type: "agent_completed", status: "cancelled", final_response: `${part.agent_name} was cancelled`, duration_ms }
      })
    }
  }
  const message = `the instance running this run (${instance_id}) stopped renewing its lease; the run cannot go on`
  out.push(
    { agent_name: parts.root.agent_name, depth: 0, body: { type: "agent_error", error: { code: INSTANCE_LOST, message } } },
    {
      agent_name: parts.root.agent_name,
      depth: 0,
      body: {
        type: "agent_completed",
        status: "failed",
        final_response: `${parts.root.agent_name} failed: ${message}`,
        duration_ms: elapsed(parts.root.startedMs, nowMs)
      }
    }
  )
  return out
}

// ---------------------------------------------------------------------------------------------

/** Events read per page while a lost run's log is read. */
const READ_PAGE = { maxEvents: 1024, maxBytes: 4 * 1024 * 1024 } as const

/** Builds the lease of this instance and its recovery loop; both run until the scope closes. */
export const make = (options?: InstanceLeaseOptions) =>
  Effect.gen(function*() {
    const instance = yield* RedisInstance.RedisInstance
    const log = yield* RunLog
    const bridge = yield* WebSocketBridge
    // history (when the instances share one, e.g. PostgreSQL): a run closed here is marked lost there too
    const history = Option.getOrUndefined(yield* Effect.serviceOption(ConversationStore))
    const leaseMs = options?.leaseMs ?? DEFAULT_INSTANCE_LEASE_MS
    if (!(leaseMs >= MIN_INSTANCE_LEASE_MS)) {
      return yield* Effect.die(new Error(`leaseMs must be at least ${MIN_INSTANCE_LEASE_MS} ms, got ${leaseMs}`))
    }
    const P = options?.keyPrefix ?? "agentwire:"
    const self = instance.instance_id
    const { redis } = instance
    const run = <R>(s: Redis.Script<{ params: Args; result: R }>, ...args: Args) =>
      redis.eval(s)(P, ...args).pipe(Effect.timeout(leaseMs))
    const stats: InstanceLeaseStats = { renewals: 0, lapses: 0, instancesRecovered: 0, runsClosed: 0 }
    const runFork = Effect.runForkWith(yield* Effect.context<never>())

    // --- the lease
    let firstRenewal = true
    let renewFailureLogged = false
    // local time until which the lease surely holds: Redis set it to (its now + leaseMs) after the renewal was sent
    let validUntil = Date.now() + leaseMs
    let lostSignalled = false
    const lostHandlers = new Set<() => void>()
    const renew: Effect.Effect<void> = Effect.suspend(() => {
      const sentAt = Date.now()
      return run(renewScript, self, leaseMs).pipe(
        Effect.flatMap((answer) =>
          Effect.suspend(() => {
            validUntil = Math.max(validUntil, sentAt + leaseMs)
            lostSignalled = false
            stats.renewals++
            renewFailureLogged = false
            const first = firstRenewal
            firstRenewal = false
            // a renewal answered late (sent into an outage) only proves the lease from when it was sent: renew
            // again at once, so that back-to-back outages each shorter than the lease do not add up to it
            const again = Date.now() - sentAt > leaseMs / 10 ? renew : Effect.void
            if (first || answer === 1) return again
            stats.lapses++
            return Effect.andThen(
              Effect.logWarning(
                "this instance's lease had expired (paused, or cut off from Redis longer than AGENTWIRE_INSTANCE_LEASE_MS): " +
                  "its runs end with INSTANCE_LOST (stopped here, or fenced where another instance closed them)"
              ),
              again
            )
          })
        ),
        Effect.catchCause((cause) =>
          Effect.suspend(() => {
            if (renewFailureLogged) return Effect.void
            renewFailureLogged = true
            return Effect.logWarning("could not renew this instance's lease in Redis", cause)
          })
        ),
        Effect.annotateLogs({ instance_id: self })
      )
    })
    yield* renew
    const expired = () => Date.now() >= validUntil
    // the watchdog: an instance that could not renew within leaseMs treats its runs as lost (another
    // instance may be closing them now): the engine stops them here, so local sockets see them end
    const watchdog = Effect.suspend(() => {
      if (lostSignalled || !expired()) return Effect.void
      lostSignalled = true
      for (const handler of Array.from(lostHandlers)) handler()
      return Effect.logWarning(
        "this instance could not renew its lease within AGENTWIRE_INSTANCE_LEASE_MS: its runs are stopped (INSTANCE_LOST)"
      ).pipe(Effect.annotateLogs({ instance_id: self }))
    })
    yield* Effect.forkScoped(Effect.repeat(watchdog, Schedule.spaced(Math.max(10, Math.min(Math.floor(leaseMs / 10), 100)))))
    yield* Effect.forkScoped(Effect.repeat(renew, Schedule.spaced(Math.max(50, Math.floor(leaseMs / 3)))))

    // (re)connected: renew at once; judge the others only a lease later
    let readyAt = Date.now()
    const onReady = () => {
      readyAt = Date.now()
      runFork(renew)
    }
    yield* Effect.acquireRelease(
      Effect.sync(() => instance.client.on("ready", onReady)),
      () => Effect.sync(() => instance.client.off("ready", onReady))
    )

    // --- closing one run
    const readAll = (user_id: string, run_id: string) =>
      Effect.gen(function*() {
        const events: Array<AgentEvent> = []
        let lastFrame: string | undefined
        let after = 0
        for (;;) {
          const page = yield* log.read(user_id, run_id, after, READ_PAGE)
          for (const logged of page.events) events.push(JSON.parse(logged.frame) as AgentEvent)
          const last = page.events.at(-1)
          if (last !== undefined) lastFrame = last.frame
          if (last === undefined || last.seq >= page.summary.last_seq) return { events, lastFrame, summary: page.summary }
          after = last.seq
        }
      })

    /** Closes a run this instance owns now (taken over from `lost`); fails (to be retried) when Redis does. */
    const closeRun = (run_id: string, user_id: string, lost: string) =>
      Effect.gen(function*() {
        // first: whoever sees the run end can start another at once
        yield* freeSlot(redis, user_id, run_id).pipe(Effect.timeout(leaseMs))
        const found = yield* readAll(user_id, run_id).pipe(
          Effect.map(Option.some),
          // gone from the log (expired, evicted, Redis lost it): nothing to close
          Effect.catchTags({ RunNotFoundError: () => Effect.succeedNone, RunExpiredError: () => Effect.succeedNone })
        )
        let closed = false
        if (Option.isSome(found) && found.value.summary.status === "running") {
          const { events, lastFrame, summary } = found.value
          const parts = openParts(events, summary.agent_name)
          if (!parts.ended) {
            // the lost instance appends an event, then publishes it: one that died (or paused) between the
            // two left the log's last event unseen by live sockets. It goes out again first, so the closing
            // events follow it in order; a connection that had it drops the repeat (it keeps the seqs it sent)
            const tail = events.at(-1)
            if (tail !== undefined && lastFrame !== undefined) yield* bridge.emit(tail, lastFrame)
            let seq = summary.last_seq
            const timestamp = new Date().toISOString()
            for (const { agent_name, body, depth } of closingBodies(parts, lost, Date.now())) {
              seq++
              const event = {
                ...body,
                event_id: `${run_id}:${seq}`,
                run_id,
                thread_id: summary.thread_id,
                user_id,
                agent_name,
                depth,
                seq,
                timestamp
              } as AgentEvent
              const frame = JSON.stringify(event)
              const result = yield* log.append(event, frame)
              // fenced: another survivor took the run over meanwhile and closes it
              if (result === "refused" || result === "fenced") {
                if (result === "refused") yield* Effect.logError("the run log refused the closing events of a lost run")
                break
              }
              yield* bridge.emit(event, frame)
              closed = true
            }
          }
        }
        if (closed) {
          stats.runsClosed++
          // its history entry says `running` (the lost instance recorded the start): now failed, INSTANCE_LOST
          if (Option.isSome(found) && history?.markRunLost !== undefined) {
            yield* history.markRunLost({ user_id, thread_id: found.value.summary.thread_id, run_id }, Date.now()).pipe(
              Effect.catch((e) => Effect.logWarning("could not mark the lost run in history").pipe(Effect.annotateLogs({ error: e.message })))
            )
          }
          yield* Effect.logWarning("closed a run of a lost instance with INSTANCE_LOST")
        }
        return closed
      }).pipe(Effect.annotateLogs({ run_id, user_id, lost_instance: lost }))

    // runs taken over and not closed yet (retried each pass): run → [user, lost instance]
    const taken = new Map<string, readonly [string, string]>()
    // runs whose takeover was given up on (Redis did not answer within leaseMs) → lost instance. The script
    // may still run: it then moves the run to this instance and out of the lost one's index, where no pass
    // would find it again, and the run would stay open for ever. Each pass asks again (the script answers
    // 'ok' for a run this instance already took), until Redis answers
    const uncertain = new Map<string, string>()
    const settleUncertain = Effect.suspend(() =>
      Effect.forEach(Array.from(uncertain), ([run_id, lost]) =>
        run(takeoverScript, lost, self, run_id).pipe(
          Effect.tap((answer) =>
            Effect.sync(() => {
              uncertain.delete(run_id)
              if (answer[0] === "ok") taken.set(run_id, [answer[1]!, lost])
            })
          ),
          Effect.catchCause((cause) => Effect.logWarning("could not settle the takeover of a lost instance's run yet; retried", cause)),
          Effect.annotateLogs({ run_id, lost_instance: lost })
        ), { discard: true })
    )

    const closeTaken = Effect.suspend(() =>
      Effect.forEach(Array.from(taken), ([run_id, [user_id, lost]]) =>
        closeRun(run_id, user_id, lost).pipe(
          Effect.tap(() => Effect.sync(() => taken.delete(run_id))),
          Effect.map((closed) => (closed ? [run_id] : [])),
          Effect.catchCause((cause) =>
            Effect.as(Effect.logWarning("could not close a run of a lost instance yet; retried", cause), [] as ReadonlyArray<string>)
          )
        ), { concurrency: 8 }).pipe(Effect.map((lists) => lists.flat()))
    )

    const recoverInstance = (lost: string) =>
      Effect.gen(function*() {
        if ((yield* run(claimScript, lost, self, leaseMs)) !== 1) return
        const index = yield* redis.send<ReadonlyArray<string>>("HKEYS", `${P}instance:${lost}:runs`).pipe(Effect.timeout(leaseMs))
        for (const run_id of index) {
          uncertain.set(run_id, lost)
          const answer = yield* run(takeoverScript, lost, self, run_id)
          uncertain.delete(run_id)
          if (answer[0] === "alive") return
          if (answer[0] === "ok") taken.set(run_id, [answer[1]!, lost])
        }
        if ((yield* run(doneScript, lost)) === 1) {
          stats.instancesRecovered++
          yield* Effect.logWarning("an instance's lease expired: its open runs were taken over").pipe(
            Effect.annotateLogs({ lost_instance: lost })
          )
        }
      }).pipe(
        Effect.catchCause((cause) => Effect.logWarning("could not recover a lost instance's runs yet; retried", cause)),
        Effect.annotateLogs({ lost_instance: lost })
      )

    // one pass at a time (the loop's and a caller's): a run is closed by one fiber only
    const passLock = Semaphore.makeUnsafe(1)
    const recover: Effect.Effect<ReadonlyArray<string>> = Effect.gen(function*() {
      yield* settleUncertain
      const lost = yield* run(expiredScript, self).pipe(Effect.orElseSucceed((): ReadonlyArray<string> => []))
      yield* Effect.forEach(lost, recoverInstance, { discard: true })
      return yield* closeTaken
    }).pipe(passLock.withPermit, Effect.withSpan("InstanceLease.recover"))

    const pass = Effect.suspend(() =>
      instance.isReady() && Date.now() - readyAt >= leaseMs ? Effect.asVoid(recover) : Effect.void
    )
    yield* Effect.forkScoped(Effect.repeat(pass, Schedule.spaced(Math.max(50, Math.min(Math.floor(leaseMs / 4), 500)))))

    // a graceful stop gives the lease back (runs left over: it expires at once, someone closes them)
    yield* Effect.addFinalizer(() =>
      // bounded: a Redis that holds the connection but does not answer must not hold shutdown (node-redis
      // times a command out only until it is written)
      Effect.suspend(() => (instance.isReady() ? Effect.ignore(Effect.timeout(run(leaveScript, self), LEAVE_TIMEOUT_MS)) : Effect.void))
    )

    const onLost = (handler: () => void) =>
      Effect.acquireRelease(
        Effect.sync(() => void lostHandlers.add(handler)),
        () => Effect.sync(() => void lostHandlers.delete(handler))
      )

    return InstanceLease.of({ instance_id: self, leaseMs, renew, recover, stats, expired, onLost })
  })

/** The lease and recovery with explicit options; requires `RedisInstance`, `RunLog` and `WebSocketBridge`. */
export const layer = (options?: InstanceLeaseOptions): Layer.Layer<InstanceLease, never, RedisInstance.RedisInstance | RunLog | WebSocketBridge> =>
  Layer.effect(InstanceLease, make(options))

/** The lease with `AgentwireConfig.instanceLeaseMs` when a config is provided, else the default. */
export const layerConfig: Layer.Layer<InstanceLease, never, RedisInstance.RedisInstance | RunLog | WebSocketBridge> = Layer.effect(
  InstanceLease,
  Effect.flatMap(Effect.serviceOption(AgentwireConfig), (config) =>
    make({ leaseMs: Option.getOrUndefined(Option.map(config, (c) => c.instanceLeaseMs)) }))
)
