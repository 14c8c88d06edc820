/**
 * The run log on Redis (issue 12) against a real `redis-server` started by the
 * test on a free port: the shared behaviour suite, two instances on one Redis,
 * the epoch, retention with real time, outage (buffer, flush, bound) and
 * startup failures. Skipped with the install command when Redis is missing.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Context, Effect, Exit, Fiber, Layer, Redacted, Stream } from "effect"
import { createClient } from "redis"
import { type AddressInfo, createServer, type Server } from "node:net"
import * as AgentInstanceFactoryLayer from "../../src/layers/AgentInstanceFactory.ts"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"
import * as ExecutionEngineFactoryLayer from "../../src/layers/ExecutionEngineFactory.ts"
import * as RunAdmissionMemory from "../../src/layers/RunAdmissionMemory.ts"
import * as RunLogRedis from "../../src/layers/RunLogRedis.ts"
import * as WebSocketBridgeRecording from "../../src/layers/WebSocketBridgeRecording.ts"
import { ExecutionEngineFactory } from "../../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { follow, RunLog, type RunLogSettings } from "../../src/services/RunLog.ts"
import { INSTALL_HINT, type RedisServer, redisServerPath, startRedis } from "../fixtures/redisServer.ts"
import { event, runLogSuite, SETTINGS } from "../fixtures/runlog-suite.ts"
import { QuietLogs, registry, runInvariants } from "../fixtures/runtime.ts"

const installed = redisServerPath() !== undefined
if (!installed) console.warn(`RunLogRedis tests skipped: redis-server is not installed (${INSTALL_HINT})`)

let server: RedisServer | undefined
let prefixes = 0
/** A fresh log: its own key prefix on the shared test server. */
const freshPrefix = () => `t${process.pid}-${prefixes++}:`
const redisLayer = (
  settings: RunLogSettings,
  options: { readonly prefix?: string; readonly bufferEvents?: number; readonly url?: string; readonly replayGraceMs?: number } = {}
) =>
  Layer.unwrap(Effect.sync(() =>
    RunLogRedis.layer({
      url: Redacted.make(options.url ?? server!.url),
      settings,
      keyPrefix: options.prefix ?? freshPrefix(),
      bufferEvents: options.bufferEvents,
      replayGraceMs: options.replayGraceMs
    })
  ))

/** Real time, for Redis's own clock (the tests' TestClock does not move it). */
const realWait = (ms: number) => Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, ms)))
/** The suite's time-based tests on Redis: short retention and replay grace, waited for in real time. */
const SUITE_RETENTION_MS = 2000
const SUITE_REPLAY_GRACE_MS = 3000

const appendTo = (log: RunLog["Service"], e: ReturnType<typeof event>) => log.append(e, JSON.stringify(e))

/** Sends one raw command to the Redis at `url` (to break a key on purpose, or to change its config). */
const rawCommand = (url: string, args: ReadonlyArray<string>) =>
  Effect.promise(async () => {
    const client = createClient({ url })
    await client.connect()
    try {
      return await client.sendCommand([...args])
    } finally {
      client.destroy()
    }
  })

/** Polls `check` every 20 ms until it holds (for conditions no event announces: time-based expiry, a server's return). */
const eventually = <A, E>(check: Effect.Effect<A, E>, holds: (a: A) => boolean, timeoutMs = 10_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const result = yield* Effect.exit(check)
      if (Exit.isSuccess(result) && holds(result.value)) return result.value
      if (Date.now() > deadline) return yield* Effect.die(new Error(`condition not reached in ${timeoutMs} ms: ${JSON.stringify(result)}`))
      yield* Effect.sleep(20)
    }
  })

/** A real engine (ticker runs) over a Redis log built with `options`, delivering to a recording bridge. */
const engineOver = (options: Parameters<typeof redisLayer>[1]) =>
  Effect.gen(function*() {
    const ctx = yield* Layer.build(ExecutionEngineFactoryLayer.layer.pipe(
      Layer.provideMerge(AgentInstanceFactoryLayer.layer),
      Layer.provideMerge(RunAdmissionMemory.layerConfig),
      Layer.provideMerge(redisLayer(AgentwireConfig.DEFAULT_RUN_LOG_SETTINGS, options)),
      Layer.provideMerge(WebSocketBridgeRecording.layer),
      Layer.provide(registry),
      Layer.provide(QuietLogs),
      Layer.provide(AgentwireConfig.layer())
    ))
    return {
      engines: Context.get(ctx, ExecutionEngineFactory),
      recorded: Context.get(ctx, WebSocketBridgeRecording.RecordedEvents),
      log: Context.get(ctx, RunLog)
    }
  })

describe.skipIf(!installed)("RunLogRedis", () => {
  beforeAll(async () => {
    server = await startRedis()
  }, 20_000)
  afterAll(async () => {
    await server?.stop()
  })

  describe("behaviour (the suite shared with memory)", () => {
    runLogSuite({
      name: "redis",
      layer: (settings) => redisLayer(settings, { replayGraceMs: SUITE_REPLAY_GRACE_MS }),
      frameBytes: RunLogRedis.redisFrameBytes,
      runOverhead: RunLogRedis.REDIS_RUN_OVERHEAD_BYTES,
      followRuns: 25,
      time: { elapse: realWait, retentionMs: SUITE_RETENTION_MS, replayGraceMs: SUITE_REPLAY_GRACE_MS }
    })
  })

  it.live("two instances on one Redis: append on one, read, list, waitFor and follow on the other", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const a = yield* Layer.build(redisLayer(SETTINGS, { prefix })).pipe(Effect.map((ctx) => Context.get(ctx, RunLog)))
      const b = yield* Layer.build(redisLayer(SETTINGS, { prefix })).pipe(Effect.map((ctx) => Context.get(ctx, RunLog)))
      expect(a.epoch).toBe(b.epoch)
      for (let seq = 1; seq <= 3; seq++) yield* appendTo(a, event("x", seq))
      expect((yield* b.read("alice", "x", 0, { maxEvents: 100, maxBytes: 1 << 20 })).events.map((e) => e.seq)).toEqual([1, 2, 3])
      expect((yield* b.list("alice")).map((r) => r.run_id)).toEqual(["x"])
      // a waiter on B wakes on A's append (through the notes channel)
      const waiting = yield* Effect.forkChild(b.waitFor("alice", "x", 3))
      const following = yield* Effect.forkChild(Stream.runCollect(follow(b, "alice", "x", 0)))
      yield* Effect.sleep(50) // no event says "B's waiter is registered": give it a moment, the test holds either way
      yield* appendTo(a, event("x", 4))
      expect(Exit.isSuccess(yield* Fiber.await(waiting))).toBe(true)
      for (let seq = 5; seq <= 30; seq++) yield* appendTo(a, event("x", seq, { end: seq === 30 }))
      const items = yield* Fiber.join(following)
      expect(items.flatMap((i) => (i._tag === "Event" ? [i.event.seq] : []))).toEqual(Array.from({ length: 30 }, (_, i) => i + 1))
      expect((yield* b.summary("alice", "x")).status).toBe("completed")
      // release on B ends A's open run
      yield* appendTo(a, event("y", 1))
      yield* b.release("y")
      expect((yield* a.summary("alice", "y")).status).toBe("cancelled")
    }).pipe(Effect.scoped))

  it.live("notes are published only while some instance waits on the run: none for unwatched appends; a waiter on another instance still wakes", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const a = yield* Layer.build(redisLayer(SETTINGS, { prefix })).pipe(Effect.map((ctx) => Context.get(ctx, RunLog)))
      const b = yield* Layer.build(redisLayer(SETTINGS, { prefix })).pipe(Effect.map((ctx) => Context.get(ctx, RunLog)))
      // a raw subscriber counts what the channel carries
      const notes: Array<string> = []
      const listener = yield* Effect.acquireRelease(
        Effect.promise(async () => {
          const client = createClient({ url: server!.url })
          await client.connect()
          await client.subscribe(`${prefix}notes`, (message) => void notes.push(message))
          return client
        }),
        (client) => Effect.sync(() => client.destroy())
      )
      expect(listener.isReady).toBe(true)
      for (let seq = 1; seq <= 20; seq++) yield* appendTo(a, event("quiet", seq))
      // a waiter on B: its key is set before it looks, then A's append publishes and wakes it
      const waiting = yield* Effect.forkChild(b.waitFor("alice", "quiet", 20))
      yield* eventually(rawCommand(server!.url, ["EXISTS", `${prefix}wait:quiet`]), (n) => Number(n) === 1)
      yield* appendTo(a, event("quiet", 21))
      expect(Exit.isSuccess(yield* Fiber.await(waiting))).toBe(true)
      yield* eventually(Effect.sync(() => notes.length), (n) => n >= 1)
      // the one note is the watched append's; the 20 before it published nothing
      expect(notes).toEqual(["quiet 21"])
    }).pipe(Effect.scoped))

  it.live("an append repeated after its answer was lost (a retried flush) is recognised and skipped; a gap in seq is a defect", () =>
    Effect.gen(function*() {
      const log = Context.get(yield* Layer.build(redisLayer(SETTINGS)), RunLog)
      for (let seq = 1; seq <= 3; seq++) yield* appendTo(log, event("d", seq))
      expect(yield* appendTo(log, event("d", 2))).toBe("ok")
      expect((yield* log.read("alice", "d", 0, { maxEvents: 100, maxBytes: 1 << 20 })).events.map((e) => e.seq)).toEqual([1, 2, 3])
      const gap = yield* Effect.exit(appendTo(log, event("d", 5)))
      expect(Exit.isFailure(gap) && String(gap.cause)).toContain("RUNLOG_ORDER")
      expect((yield* log.summary("alice", "d")).last_seq).toBe(3)
    }).pipe(Effect.scoped))

  it.live("the epoch: stable across a second instance and a rebuilt layer; new after Redis restarts empty", () =>
    Effect.gen(function*() {
      const own = yield* Effect.promise(() => startRedis())
      yield* Effect.addFinalizer(() => Effect.promise(() => own.stop()))
      const prefix = freshPrefix()
      const layer = () => redisLayer(SETTINGS, { prefix, url: own.url })
      const epochOf = Effect.scoped(Effect.flatMap(Layer.build(layer()), (ctx) => Effect.succeed(Context.get(ctx, RunLog).epoch)))
      const first = yield* epochOf
      expect(first).toMatch(/^epoch_/)
      expect(yield* epochOf).toBe(first)
      // a live instance sees the epoch change when Redis comes back empty
      const live = Context.get(yield* Layer.build(layer()), RunLog)
      expect(live.epoch).toBe(first)
      yield* appendTo(live, event("before", 1))
      yield* Effect.promise(() => own.restart())
      const after = yield* eventually(Effect.sync(() => live.epoch), (e) => e !== first)
      expect(after).toMatch(/^epoch_/)
      expect(yield* epochOf).toBe(after)
      // what Redis forgot is unknown (not a gap)
      expect((yield* Effect.flip(live.summary("alice", "before")))._tag).toBe("RunNotFoundError")
    }).pipe(Effect.scoped), 30_000)

  it.live("retention with real time: a finished run expires retentionMs after its end, leaves a tombstone, then is unknown", () =>
    Effect.gen(function*() {
      const log = Context.get(yield* Layer.build(redisLayer({ ...SETTINGS, retentionMs: 300, tombstoneMs: 1500 })), RunLog)
      for (let seq = 1; seq <= 4; seq++) yield* appendTo(log, event("old", seq, { end: seq === 4 }))
      yield* appendTo(log, event("live", 1))
      expect((yield* log.summary("alice", "old")).last_seq).toBe(4)
      const expired = yield* eventually(Effect.flip(log.summary("alice", "old")), (e) => e._tag === "RunExpiredError")
      expect(expired).toMatchObject({ _tag: "RunExpiredError", last_seq: 4 })
      expect((yield* Effect.flip(log.summary("bob", "old")))._tag).toBe("RunNotFoundError")
      expect((yield* log.list("alice")).map((r) => r.run_id)).toEqual(["live"])
      expect((yield* log.summary("alice", "live")).status).toBe("running")
      yield* eventually(log.stats, (s) => s.tombstones === 1 && s.runs === 1)
      yield* eventually(Effect.flip(log.summary("alice", "old")), (e) => e._tag === "RunNotFoundError")
      expect((yield* log.stats).tombstones).toBe(0)
    }).pipe(Effect.scoped), 20_000)

  it.live("outage: appends buffer while Redis is down and are flushed in order with the same seqs when it returns", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "aw-redis-"))
      const own = yield* Effect.promise(() => startRedis(["--appendonly", "yes", "--dir", dir]))
      yield* Effect.addFinalizer(() => Effect.promise(() => own.stop().then(() => rmSync(dir, { recursive: true, force: true }))))
      const log = Context.get(yield* Layer.build(redisLayer({ ...SETTINGS, maxEventsPerRun: 10_000 }, { url: own.url })), RunLog)
      const epoch = log.epoch
      for (let seq = 1; seq <= 10; seq++) expect(yield* appendTo(log, event("o", seq))).toBe("ok")
      const waiting = yield* Effect.forkChild(log.waitFor("alice", "o", 10))
      yield* Effect.promise(() => own.stop()) // a clean stop keeps the data (append-only file): Redis returns with it
      yield* eventually(log.stats, (s) => s.store?.up === false)
      for (let seq = 11; seq <= 40; seq++) expect(yield* appendTo(log, event("o", seq, { end: seq === 40 }))).toBe("ok")
      expect((yield* log.stats).store).toEqual({ up: false, bufferedEvents: 30 })
      const down = yield* Effect.flip(log.summary("alice", "o"))
      expect(down._tag).toBe("RunLogUnavailableError")
      expect((yield* Effect.flip(log.list("alice")))._tag).toBe("RunLogUnavailableError")
      yield* Effect.promise(() => own.restart())
      yield* eventually(log.stats, (s) => s.store?.up === true && s.store.bufferedEvents === 0)
      expect(Exit.isSuccess(yield* Fiber.await(waiting))).toBe(true)
      const page = yield* log.read("alice", "o", 0, { maxEvents: 100, maxBytes: 1 << 20 })
      expect(page.events.map((e) => e.seq)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1))
      expect(page.events.map((e) => JSON.parse(e.frame).seq)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1))
      expect(page.summary).toMatchObject({ status: "completed", last_seq: 40 })
      expect(log.epoch).toBe(epoch)
    }).pipe(Effect.scoped), 30_000)

  it.live("outage past the buffer's bound: the run is told log_unavailable; once Redis is back it answers RUN_EXPIRED, other runs flushed", () =>
    Effect.gen(function*() {
      const own = yield* Effect.promise(() => startRedis())
      yield* Effect.addFinalizer(() => Effect.promise(() => own.stop()))
      const log = Context.get(yield* Layer.build(redisLayer({ ...SETTINGS, maxEventsPerRun: 10_000 }, { url: own.url, bufferEvents: 20 })), RunLog)
      yield* appendTo(log, event("small", 1))
      yield* appendTo(log, event("big", 1))
      yield* Effect.promise(() => own.kill())
      yield* eventually(log.stats, (s) => s.store?.up === false)
      for (let seq = 2; seq <= 5; seq++) expect(yield* appendTo(log, event("small", seq))).toBe("ok")
      const results: Array<string> = []
      for (let seq = 2; seq <= 30; seq++) results.push(yield* appendTo(log, event("big", seq)))
      // 4 of small + 16 of big fill the 20; the 17th of big overflows
      expect(results.slice(0, 16).every((r) => r === "ok")).toBe(true)
      expect(results.slice(16).every((r) => r === "log_unavailable")).toBe(true)
      expect((yield* log.stats).store).toEqual({ up: false, bufferedEvents: 4 })
      // Redis comes back empty (no persistence): a new epoch; the lost run is expired, the small one unknown
      yield* Effect.promise(() => own.restart())
      yield* eventually(log.stats, (s) => s.store?.up === true && s.store.bufferedEvents === 0)
      const big = yield* eventually(Effect.flip(log.summary("alice", "big")), (e) => e._tag === "RunExpiredError")
      expect(big).toMatchObject({ _tag: "RunExpiredError", last_seq: 30 })
      // small's start is gone with Redis's data: remembered as expired at its last seq rather than logged with a gap
      expect(yield* Effect.flip(log.summary("alice", "small"))).toMatchObject({ _tag: "RunExpiredError", last_seq: 5 })
    }).pipe(Effect.scoped), 30_000)

  it.live("outage flush: a run whose buffered events Redis refuses for good (WRONGTYPE) is given up at once, as expired, without holding up the other runs", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "aw-redis-"))
      const own = yield* Effect.promise(() => startRedis(["--appendonly", "yes", "--dir", dir]))
      yield* Effect.addFinalizer(() => Effect.promise(() => own.stop().then(() => rmSync(dir, { recursive: true, force: true }))))
      const prefix = freshPrefix()
      const log = Context.get(yield* Layer.build(redisLayer(SETTINGS, { url: own.url, prefix })), RunLog)
      for (const run_id of ["bad", "good"]) expect(yield* appendTo(log, event(run_id, 1))).toBe("ok")
      // bad's stream becomes a key of another type (an operator's mistake, a bug): Redis refuses its appends for good
      yield* rawCommand(own.url, ["SET", `${prefix}run:bad:s`, "not a stream"])
      yield* Effect.promise(() => own.stop()) // a clean stop keeps the data (append-only file)
      yield* eventually(log.stats, (s) => s.store?.up === false)
      // bad's events wait first in the buffer
      for (let seq = 2; seq <= 3; seq++) expect(yield* appendTo(log, event("bad", seq))).toBe("ok")
      for (let seq = 2; seq <= 5; seq++) expect(yield* appendTo(log, event("good", seq, { end: seq === 5 }))).toBe("ok")
      expect((yield* log.stats).store).toEqual({ up: false, bufferedEvents: 2 + 4 })
      yield* Effect.promise(() => own.restart())
      // everything flushed or given up: good whole, bad not retried
      yield* eventually(log.stats, (s) => s.store?.up === true && s.store.bufferedEvents === 0)
      const good = yield* log.read("alice", "good", 0, { maxEvents: 100, maxBytes: 1 << 20 })
      expect(good.events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5])
      expect(good.summary.status).toBe("completed")
      // bad's log is given up: expired at the last seq it had, and its run is told to end
      expect(yield* Effect.flip(log.summary("alice", "bad"))).toMatchObject({ _tag: "RunExpiredError", last_seq: 3 })
      expect(yield* appendTo(log, event("bad", 4))).toBe("log_unavailable")
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("outage: while buffered, a run is told of its event caps as Redis would tell it (event_limit past the soft cap, refused past the cap)", () =>
    Effect.gen(function*() {
      const own = yield* Effect.promise(() => startRedis())
      yield* Effect.addFinalizer(() => Effect.promise(() => own.stop()))
      const log = Context.get(yield* Layer.build(redisLayer(SETTINGS, { url: own.url })), RunLog)
      expect(yield* appendTo(log, event("capped", 1))).toBe("ok")
      yield* Effect.promise(() => own.kill())
      yield* eventually(log.stats, (s) => s.store?.up === false)
      // 75 = 100 less the reserve
      const results: Array<string> = []
      for (let seq = 2; seq <= 102; seq++) results.push(yield* appendTo(log, event("capped", seq)))
      expect(results.slice(0, 74).every((r) => r === "ok")).toBe(true)
      expect(results.slice(74, 99).every((r) => r === "event_limit")).toBe(true)
      expect(results.slice(99)).toEqual(["refused", "refused"])
      expect((yield* log.stats).store).toEqual({ up: false, bufferedEvents: 99 })
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("an error reply that may pass (OOM) is retried, but not forever: the run's buffered events are given up and the run is told log_unavailable", () =>
    Effect.gen(function*() {
      const own = yield* Effect.promise(() => startRedis())
      yield* Effect.addFinalizer(() => Effect.promise(() => own.stop()))
      const log = Context.get(yield* Layer.build(redisLayer(SETTINGS, { url: own.url })), RunLog)
      expect(yield* appendTo(log, event("oom", 1))).toBe("ok")
      // Redis answers, but refuses every write
      yield* rawCommand(own.url, ["CONFIG", "SET", "maxmemory", "1"])
      expect(yield* appendTo(log, event("oom", 2))).toBe("ok")
      expect((yield* log.stats).store).toEqual({ up: true, bufferedEvents: 1 })
      // about FLUSH_ATTEMPTS ticks later the run's log is given up
      yield* eventually(log.stats, (s) => s.store?.bufferedEvents === 0, 20_000)
      expect(yield* appendTo(log, event("oom", 3))).toBe("log_unavailable")
      // once Redis takes writes again, other runs are logged as before
      yield* rawCommand(own.url, ["CONFIG", "SET", "maxmemory", "0"])
      expect(yield* appendTo(log, event("fine", 1))).toBe("ok")
      expect((yield* log.summary("alice", "fine")).last_seq).toBe(1)
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("a Redis that stops answering (SIGSTOP) is reported down by stats (what /ready shows) while it hangs, many concurrent asks sharing one probe; up again once it answers", () =>
    Effect.gen(function*() {
      const log = Context.get(yield* Layer.build(redisLayer(SETTINGS)), RunLog)
      const evalCalls = Effect.map(rawCommand(server!.url, ["INFO", "commandstats"]), (info) => Number(/cmdstat_evalsha:calls=(\d+)/.exec(String(info))?.[1] ?? 0))
      const before = yield* evalCalls
      const pid = server!.pid()!
      process.kill(pid, "SIGSTOP")
      // a safety net: whatever happens below, Redis answers again (before the fix, stats waited for it)
      const safety = setTimeout(() => process.kill(pid, "SIGCONT"), 8000)
      yield* Effect.addFinalizer(() => Effect.sync(() => {
        clearTimeout(safety)
        process.kill(pid, "SIGCONT")
      }))
      const asked = yield* Effect.forEach(Array.from({ length: 20 }, () => log.stats), (s) => s, { concurrency: "unbounded" })
      clearTimeout(safety)
      for (const s of asked) expect(s.store?.up).toBe(false)
      // an ask after the first ones is answered from the same probe (still unanswered): down again
      expect((yield* log.stats).store?.up).toBe(false)
      process.kill(pid, "SIGCONT")
      expect(yield* eventually(log.stats, (s) => s.store?.up === true)).toMatchObject({ store: { up: true, bufferedEvents: 0 } })
      // the 21 asks sent one script between them (the rest: the periodic sweep, the last asks, INFO itself is not EVALSHA)
      expect((yield* evalCalls) - before).toBeLessThanOrEqual(6)
    }).pipe(Effect.scoped, Effect.provide(QuietLogs)), 30_000)

  it.live("startup: unreachable Redis or wrong credentials is a RedisStartError naming host:port, never the password", () =>
    Effect.gen(function*() {
      const guarded = yield* Effect.promise(() => startRedis(["--requirepass", "s3cret-pass"]))
      yield* Effect.addFinalizer(() => Effect.promise(() => guarded.stop()))
      const wrong = yield* Effect.flip(Layer.build(redisLayer(SETTINGS, { url: `redis://:wrong-pass@127.0.0.1:${guarded.port}` })))
      expect(wrong._tag).toBe("RedisStartError")
      expect(wrong.message).toBe(`cannot reach Redis at 127.0.0.1:${guarded.port} (AGENTWIRE_REDIS_URL): wrong credentials (WRONGPASS)`)
      expect(wrong.message).not.toContain("wrong-pass")
      const none = yield* Effect.flip(Layer.build(redisLayer(SETTINGS, { url: `redis://127.0.0.1:${guarded.port}` })))
      expect(none.message).toContain("NOAUTH")
      // the right password works
      const ok = Context.get(yield* Layer.build(redisLayer(SETTINGS, { url: `redis://:s3cret-pass@127.0.0.1:${guarded.port}` })), RunLog)
      expect(ok.epoch).toMatch(/^epoch_/)
      // nobody listening
      const gone = yield* Effect.promise(() => startRedis())
      yield* Effect.promise(() => gone.stop())
      const refused = yield* Effect.flip(Layer.build(redisLayer(SETTINGS, { url: `redis://:pw@127.0.0.1:${gone.port}` })))
      expect(refused.message).toBe(`cannot reach Redis at 127.0.0.1:${gone.port} (AGENTWIRE_REDIS_URL): connection refused`)
      // a server that accepts connections and never answers (a stalled Redis): a bounded failure, not a hang
      const silent = yield* Effect.acquireRelease(
        Effect.promise(() => new Promise<Server>((resolve) => {
          const s = createServer((socket) => socket.on("error", () => {}))
          s.listen(0, "127.0.0.1", () => resolve(s))
        })),
        (s) => Effect.sync(() => { s.close(); s.unref() })
      )
      const silentPort = (silent.address() as AddressInfo).port
      const unanswered = yield* Effect.flip(Layer.build(redisLayer(SETTINGS, { url: `redis://:pw@127.0.0.1:${silentPort}` })))
      expect(unanswered.message).toBe(`cannot reach Redis at 127.0.0.1:${silentPort} (AGENTWIRE_REDIS_URL): did not answer within 5 s`)
    }).pipe(Effect.scoped), 30_000)

  it.live("a run whose events overflow the outage buffer ends with agent_error LOG_UNAVAILABLE and agent_completed failed; its log then answers RUN_EXPIRED", () =>
    Effect.gen(function*() {
      const own = yield* Effect.promise(() => startRedis())
      yield* Effect.addFinalizer(() => Effect.promise(() => own.stop()))
      const { engines, recorded, log } = yield* engineOver({ url: own.url, bufferEvents: 10 })
      const context = yield* UserExecutionContext.make({ user_id: "alice" })
      const handle = yield* engines.start(context, "ticker", "steps=500 interval_ms=2")
      yield* recorded.waitFor((e) => e.run_id === context.run_id && e.seq === 5)
      yield* Effect.promise(() => own.kill())
      const outcome = yield* handle.await
      expect(outcome).toMatchObject({ status: "failed", error: { code: "LOG_UNAVAILABLE" } })
      const events = yield* recorded.ofRun(context.run_id)
      expect(runInvariants(events)).toEqual([])
      expect(events.find((e) => e.type === "agent_error")).toMatchObject({ depth: 0, error: { code: "LOG_UNAVAILABLE" } })
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", status: "failed" })
      yield* Effect.promise(() => own.restart())
      // the lost run is recorded once Redis answers again
      const expired = yield* eventually(Effect.flip(log.summary("alice", context.run_id)), (e) => e._tag === "RunExpiredError")
      expect(expired).toMatchObject({ _tag: "RunExpiredError", last_seq: events.length })
    }).pipe(Effect.scoped), 30_000)

  it.live("a Redis that stops answering (SIGSTOP: the connection stays up) holds nothing for long: the run goes on delivering, reads fail LOG_UNAVAILABLE, and the log gets everything once Redis answers again", () =>
    Effect.gen(function*() {
      const own = yield* Effect.promise(() => startRedis())
      yield* Effect.addFinalizer(() => Effect.promise(() => own.stop()))
      const { engines, log, recorded } = yield* engineOver({ url: own.url })
      const context = yield* UserExecutionContext.make({ user_id: "alice" })
      const handle = yield* engines.start(context, "ticker", "steps=400 interval_ms=10")
      yield* recorded.waitFor((e) => e.run_id === context.run_id && e.seq === 5)
      const pid = own.pid()!
      process.kill(pid, "SIGSTOP")
      // a safety net: the test's own waits end long before it
      const safety = setTimeout(() => process.kill(pid, "SIGCONT"), 20_000)
      try {
        // events keep flowing while Redis is silent (the first append waits REPLY_TIMEOUT_MS at most, then the log buffers)
        yield* recorded.waitFor((e) => e.run_id === context.run_id && e.seq === 250)
        const read = yield* Effect.flip(log.summary("alice", context.run_id))
        expect(read._tag).toBe("RunLogUnavailableError")
      } finally {
        clearTimeout(safety)
        process.kill(pid, "SIGCONT")
      }
      const outcome = yield* handle.await
      expect(outcome.status).toBe("completed")
      const events = yield* recorded.ofRun(context.run_id)
      expect(runInvariants(events)).toEqual([])
      // what was buffered reached the log, in order, with the same seqs
      const summary = yield* eventually(log.summary("alice", context.run_id), (s) => s.last_seq === events.length)
      expect(summary.status).toBe("completed")
    }).pipe(Effect.scoped), 60_000)

  it.live("a run whose events Redis refuses for good (its stream replaced by a key of another type) ends with agent_error LOG_UNAVAILABLE and agent_completed failed; its log answers RUN_EXPIRED", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const { engines, recorded, log } = yield* engineOver({ prefix })
      const context = yield* UserExecutionContext.make({ user_id: "alice" })
      const handle = yield* engines.start(context, "ticker", "steps=500 interval_ms=2")
      yield* recorded.waitFor((e) => e.run_id === context.run_id && e.seq === 5)
      yield* rawCommand(server!.url, ["SET", `${prefix}run:${context.run_id}:s`, "not a stream"])
      const outcome = yield* handle.await
      expect(outcome).toMatchObject({ status: "failed", error: { code: "LOG_UNAVAILABLE" } })
      const events = yield* recorded.ofRun(context.run_id)
      expect(runInvariants(events)).toEqual([])
      expect(events.length).toBeLessThan(500)
      expect(events.find((e) => e.type === "agent_error")).toMatchObject({ depth: 0, error: { code: "LOG_UNAVAILABLE" } })
      expect(events.at(-1)).toMatchObject({ type: "agent_completed", status: "failed" })
      expect((yield* Effect.flip(log.summary("alice", context.run_id)))._tag).toBe("RunExpiredError")
      expect((yield* log.stats).store).toEqual({ up: true, bufferedEvents: 0 })
    }).pipe(Effect.scoped), 30_000)
})
