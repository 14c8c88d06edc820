/**
 * Issue 8: the run lifecycle over real sockets and HTTP on the in-memory server
 * (the shared suite test/fixtures/lifecycle-suite.ts — stop, limits,
 * idempotent starts, isolation under load; the same runs on Redis in
 * test/lifecycle-redis.test.ts), plus the engine-level timeout and the
 * in-memory admission's rate limit and idempotency window on the TestClock.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer } from "effect"
import * as AgentInstanceFactoryLayer from "../src/layers/AgentInstanceFactory.ts"
import * as ExecutionEngineFactoryLayer from "../src/layers/ExecutionEngineFactory.ts"
import * as RunLogMemory from "../src/layers/RunLogMemory.ts"
import * as WebSocketBridgeRecording from "../src/layers/WebSocketBridgeRecording.ts"
import { TestClock } from "effect/testing"
import * as AgentwireConfig from "../src/layers/AgentwireConfig.ts"
import * as RunAdmissionMemory from "../src/layers/RunAdmissionMemory.ts"
import { RecordedEvents } from "../src/layers/WebSocketBridgeRecording.ts"
import { ExecutionEngineFactory } from "../src/services/ExecutionEngineFactory.ts"
import { RunAdmission } from "../src/services/RunAdmission.ts"
import * as UserExecutionContext from "../src/services/UserExecutionContext.ts"
import { lifecycleRegistry, lifecycleSuite } from "./fixtures/lifecycle-suite.ts"
import { QuietLogs, RecordingRuntime, runInvariants } from "./fixtures/runtime.ts"
import * as TestServer from "./fixtures/testServer.ts"

lifecycleSuite("memory", (settings) => TestServer.serverLayer(settings, { registry: lifecycleRegistry }))

// ---------------------------------------------------------------------------
describe("on the TestClock", () => {
  it.effect("a run over AGENTWIRE_RUN_TIMEOUT_MS ends with agent_error RUN_TIMEOUT and agent_completed timed_out", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const recorded = yield* RecordedEvents
      const context = yield* UserExecutionContext.make({ user_id: "slowpoke" })
      const handle = yield* engines.start(context, "ticker", "steps=5 interval_ms=60000")
      yield* recorded.waitFor((e) => e.run_id === context.run_id && e.type === "agent_thinking")
      const waiting = yield* Effect.forkChild(handle.await)
      yield* TestClock.adjust("1 second")
      const outcome = yield* Fiber.join(waiting)
      expect(outcome).toMatchObject({ status: "timed_out", error: { code: "RUN_TIMEOUT" } })
      const events = yield* recorded.ofRun(context.run_id)
      expect(events.slice(-2).map((e) => e.type)).toEqual(["agent_error", "agent_completed"])
      expect(events.at(-1)).toMatchObject({ status: "timed_out" })
      expect(runInvariants(events)).toEqual([])
      expect(yield* engines.activeRuns).toBe(0)
    }).pipe(Effect.provide(RecordingRuntime.pipe(Layer.provide(AgentwireConfig.layer({ runTimeoutMs: 1000 }))))))

  it.effect("each run times out at its own deadline: runs started apart time out apart, a run that ended early holds no one up, and a run started after a quiet time still times out (one timer for all runs)", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const recorded = yield* RecordedEvents
      const start = (user_id: string, request: string) =>
        Effect.gen(function*() {
          const context = yield* UserExecutionContext.make({ user_id })
          const handle = yield* engines.start(context, "ticker", request)
          yield* recorded.waitFor((e) => e.run_id === context.run_id && e.type === "agent_thinking")
          return { context, waiting: yield* Effect.forkChild(handle.await) }
        })
      // a short run first: it ends long before its deadline
      const short = yield* start("early", "steps=2 interval_ms=100")
      const a = yield* start("a", "steps=5 interval_ms=60000")
      yield* TestClock.adjust("100 millis")
      expect((yield* Fiber.join(short.waiting)).status).toBe("completed")
      yield* TestClock.adjust("400 millis")
      const b = yield* start("b", "steps=5 interval_ms=60000")
      // t = 1000: a is due (started at 0), b (started at 500) is not
      yield* TestClock.adjust("500 millis")
      expect(yield* Fiber.join(a.waiting)).toMatchObject({ status: "timed_out", error: { code: "RUN_TIMEOUT" } })
      expect(yield* engines.activeRuns).toBe(1)
      yield* TestClock.adjust("499 millis")
      expect(yield* engines.activeRuns).toBe(1)
      yield* TestClock.adjust("1 millis")
      expect(yield* Fiber.join(b.waiting)).toMatchObject({ status: "timed_out", error: { code: "RUN_TIMEOUT" } })
      expect(yield* engines.activeRuns).toBe(0)
      // nothing runs for a while, then a run starts: the timer, idle meanwhile, times it out too
      yield* TestClock.adjust("10 seconds")
      const c = yield* start("c", "steps=5 interval_ms=60000")
      yield* TestClock.adjust("999 millis")
      expect(yield* engines.activeRuns).toBe(1)
      yield* TestClock.adjust("1 millis")
      expect(yield* Fiber.join(c.waiting)).toMatchObject({ status: "timed_out", error: { code: "RUN_TIMEOUT" } })
      for (const run of [a, b, c]) expect(runInvariants(yield* recorded.ofRun(run.context.run_id))).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime.pipe(Layer.provide(AgentwireConfig.layer({ runTimeoutMs: 1000 }))))))

  it.effect("an ended run is remembered small: a duplicate's outcome keeps at most 256 characters of a 60 KB answer (review finding)", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const context = yield* UserExecutionContext.make({ user_id: "big", request_id: "big-1" })
      const big = "y".repeat(60_000)
      const first = yield* engines.start(context, "echo", big, { idempotent: true })
      expect((yield* first.await).final_response.length).toBeGreaterThanOrEqual(60_000)
      const again = yield* engines.start({ ...context, run_id: "run_again" }, "echo", big, { idempotent: true })
      expect(again.duplicate).toBe(true)
      expect((yield* again.await).final_response.length).toBeLessThanOrEqual(257)
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("the start budget refills at the configured rate; refused and repeated starts spend nothing", () =>
    Effect.gen(function*() {
      const admission = yield* RunAdmission
      const admit = (user_id: string, request_id?: string) =>
        Effect.flatMap(UserExecutionContext.make({ user_id, request_id }), (context) =>
          admission.admit(context, "echo", {
            rateLimited: true,
            ...(request_id === undefined ? {} : { idempotency: { fingerprint: "p", threadGiven: false } })
          }))
      yield* admit("u", "first")
      yield* admit("u")
      const refused = yield* Effect.flip(admit("u"))
      expect(refused).toMatchObject({ reason: "rate_limited", retry_after_ms: 500 })
      // a repeat of an accepted request_id is its duplicate, never rate-limited (review finding)
      expect((yield* admit("u", "first"))._tag).toBe("Duplicate")
      yield* TestClock.adjust("499 millis")
      expect((yield* Effect.flip(admit("u"))).reason).toBe("rate_limited")
      yield* TestClock.adjust("1 millis")
      yield* admit("u")
      // another user has a budget of their own
      yield* admit("v")
    }).pipe(Effect.provide(RunAdmissionMemory.layer({ ...AgentwireConfig.DEFAULT_RUN_LIMITS, maxRunsPerUser: 100, runStartsPerSecond: 2, runStartBurst: 2 }))))

  it.effect("a start refused for the run limit spends no start budget (review finding)", () =>
    Effect.gen(function*() {
      const admission = yield* RunAdmission
      const admit = Effect.flatMap(UserExecutionContext.make({ user_id: "u" }), (context) => admission.admit(context, "echo", { rateLimited: true }))
      const first = yield* admit
      for (let i = 0; i < 9; i++) expect((yield* Effect.flip(admit)).reason).toBe("run_limit")
      if (first._tag === "Admitted") yield* first.release
      expect((yield* admit)._tag).toBe("Admitted")
    }).pipe(Effect.provide(RunAdmissionMemory.layer({ ...AgentwireConfig.DEFAULT_RUN_LIMITS, maxRunsPerUser: 1, runStartsPerSecond: 1, runStartBurst: 2 }))))

  it.effect("a request_id is remembered for the idempotency window, then forgotten; a retry naming the original thread is its duplicate", () =>
    Effect.gen(function*() {
      const admission = yield* RunAdmission
      const context = yield* UserExecutionContext.make({ user_id: "u", request_id: "r-1" })
      const idem = (threadGiven: boolean) => ({ idempotency: { fingerprint: "payload", threadGiven } })
      const first = yield* admission.admit(context, "echo", idem(false))
      expect(first._tag).toBe("Admitted")
      if (first._tag === "Admitted") yield* first.release
      expect((yield* admission.admit({ ...context, run_id: "run_2", thread_id: "t-other" }, "echo", idem(false)))._tag).toBe("Duplicate")
      // the retry names the thread its run_accepted gave (review finding)
      expect((yield* admission.admit({ ...context, run_id: "run_2" }, "echo", idem(true)))._tag).toBe("Duplicate")
      expect((yield* Effect.flip(admission.admit({ ...context, run_id: "run_2", thread_id: "t-other" }, "echo", idem(true)))).reason)
        .toBe("request_id_conflict")
      yield* TestClock.adjust("60 seconds")
      expect((yield* admission.admit({ ...context, run_id: "run_3" }, "echo", idem(false)))._tag).toBe("Admitted")
    }).pipe(Effect.provide(RunAdmissionMemory.layer({ ...AgentwireConfig.DEFAULT_RUN_LIMITS, idempotencyWindowMs: 60_000 }))))
})

// ---------------------------------------------------------------------------
/**
 * The in-memory admission (limit 1 per user) with each run's `release` wrapped, e.g. to take a while as a
 * release on Redis does (a round trip, two when the script is not loaded yet), or to hang (Redis paused).
 */
const releaseAdmission = (release: (inner: Effect.Effect<void>) => Effect.Effect<void>) =>
  Layer.effect(
    RunAdmission,
    Effect.map(RunAdmissionMemory.make({ ...AgentwireConfig.DEFAULT_RUN_LIMITS, runStartsPerSecond: 0, maxRunsPerUser: 1 }), (inner) =>
      RunAdmission.of({
        ...inner,
        admit: (context, agent_name, options) =>
          Effect.map(inner.admit(context, agent_name, options), (admission) =>
            admission._tag === "Admitted" ? { ...admission, release: release(admission.release) } : admission)
      }))
  )
const engineOver = (admission: Layer.Layer<RunAdmission>) =>
  ExecutionEngineFactoryLayer.layer.pipe(
    Layer.provideMerge(AgentInstanceFactoryLayer.layer),
    Layer.provideMerge(admission),
    Layer.provideMerge(RunLogMemory.layerConfig),
    Layer.provideMerge(WebSocketBridgeRecording.layer),
    Layer.provide(lifecycleRegistry),
    Layer.provide(QuietLogs),
    Layer.provide(AgentwireConfig.layer({}))
  )

describe("a stop and the run's admission slot", () => {
  it.live("the stop returns once the stopped run's slot is free: a start right after it is admitted, however long the release takes (before: run_stopped came first, and on Redis under load the next start met RUN_LIMIT_EXCEEDED)", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const admission = yield* RunAdmission
      const recorded = yield* RecordedEvents
      const context = yield* UserExecutionContext.make({ user_id: "slow-release" })
      yield* engines.start(context, "holder", "x")
      yield* recorded.waitFor((e) => e.run_id === context.run_id && e.type === "tool_executing")
      expect(yield* engines.stop({ user_id: "slow-release", run_id: context.run_id })).toEqual([context.run_id])
      expect(yield* admission.activeRuns("slow-release")).toBe(0)
      const next = yield* engines.start(yield* UserExecutionContext.make({ user_id: "slow-release" }), "echo", "after the stop")
      expect((yield* next.await).status).toBe("completed")
    }).pipe(Effect.provide(engineOver(releaseAdmission((release) => Effect.andThen(Effect.sleep(200), release))))))
})


describe("a run's end and its admission slot", () => {
  it.live("the slot is free before the root agent_completed is sent: a start sent on seeing it is admitted, however long the release takes (before: the release came after, and on Redis a client starting its next message on completion met RUN_LIMIT_EXCEEDED)", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const admission = yield* RunAdmission
      const recorded = yield* RecordedEvents
      for (let i = 0; i < 3; i++) {
        const context = yield* UserExecutionContext.make({ user_id: "next-on-end" })
        yield* engines.start(context, "echo", `message ${i}`)
        yield* recorded.waitFor((e) => e.run_id === context.run_id && e.type === "agent_completed" && e.depth === 0)
        expect(yield* admission.activeRuns("next-on-end")).toBe(0)
      }
    }).pipe(Effect.provide(engineOver(releaseAdmission((release) => Effect.andThen(Effect.sleep(200), release))))))

  it.effect("a release that hangs (Redis paused) holds the root agent_completed back at most RELEASE_BEFORE_END_MS", () =>
    Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      yield* Effect.gen(function*() {
        const engines = yield* ExecutionEngineFactory
        const recorded = yield* RecordedEvents
        const context = yield* UserExecutionContext.make({ user_id: "hung-release" })
        const completions = Effect.map(recorded.all, (all) => all.filter((e) => e.run_id === context.run_id && e.type === "agent_completed").length)
        const run = yield* engines.start(context, "echo", "hello")
        yield* Deferred.await(started)
        expect(yield* completions).toBe(0)
        yield* TestClock.adjust(ExecutionEngineFactoryLayer.RELEASE_BEFORE_END_MS - 1)
        expect(yield* completions).toBe(0)
        yield* TestClock.adjust(1)
        expect((yield* run.await).status).toBe("completed")
        expect(yield* completions).toBe(1)
      }).pipe(Effect.provide(engineOver(releaseAdmission(() => {
        // the first release hangs; later ones do nothing (a release runs once: RunAdmission's contract)
        let ran = false
        return Effect.suspend(() => ran ? Effect.void : (ran = true, Effect.andThen(Deferred.succeed(started, undefined), Effect.never)))
      }))))
    }))
})
