import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Scope } from "effect"
import { RecordedEvents } from "../../src/layers/WebSocketBridgeRecording.ts"
import { ExecutionEngineFactory } from "../../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { WebSocketBridge } from "../../src/services/WebSocketBridge.ts"
import { fakeConnection } from "../fixtures/events.ts"
import { RecordingRuntime, runInvariants } from "../fixtures/runtime.ts"

describe("ExecutionEngineFactory", () => {
  it.effect("createForUser gives an engine bound to one context, released when its scope closes", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const recorded = yield* RecordedEvents
      const context = yield* UserExecutionContext.make({ user_id: "alice", thread_id: "thread-7" })
      const outcome = yield* Effect.scoped(Effect.gen(function*() {
        const engine = yield* engines.createForUser(context)
        expect(engine.context).toBe(context)
        expect(yield* engines.liveEngines).toBe(1)
        const outcome = yield* engine.run("echo", "hi")
        expect(engine.emitter.lastSeq()).toBe(3)
        return outcome
      }))
      expect(yield* engines.liveEngines).toBe(0)
      expect(outcome).toMatchObject({ status: "completed", final_response: "hi" })
      const events = yield* recorded.ofRun(context.run_id)
      expect(events.every((e) => e.user_id === "alice" && e.thread_id === "thread-7")).toBe(true)
      expect(runInvariants(events)).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("two engines of one user keep separate sequences", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const recorded = yield* RecordedEvents
      const a = yield* UserExecutionContext.make({ user_id: "alice" })
      const b = yield* UserExecutionContext.make({ user_id: "alice" })
      yield* Effect.scoped(Effect.gen(function*() {
        const ea = yield* engines.createForUser(a)
        const eb = yield* engines.createForUser(b)
        yield* Effect.all([ea.run("ticker", "steps=20 interval_ms=0"), eb.run("calculator", "1+1")], { concurrency: "unbounded" })
      }))
      expect(runInvariants(yield* recorded.ofRun(a.run_id))).toEqual([])
      expect(runInvariants(yield* recorded.ofRun(b.run_id))).toEqual([])
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("start runs in the background; concurrent users only ever get their own events", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const bridge = yield* WebSocketBridge
      const users = ["u1", "u2", "u3"]
      const sockets = users.map((u) => fakeConnection(`c-${u}`, u))
      for (const s of sockets) yield* bridge.register(s.connection)
      const handles = yield* Effect.forEach(users, (user_id) =>
        Effect.flatMap(UserExecutionContext.make({ user_id }), (ctx) => engines.start(ctx, "ticker", "steps=25 interval_ms=0")))
      const outcomes = yield* Effect.forEach(handles, (h) => h.await, { concurrency: "unbounded" })
      expect(outcomes.map((o) => o.status)).toEqual(["completed", "completed", "completed"])
      sockets.forEach((s, i) => {
        expect(s.frames.length).toBe(27)
        expect(s.frames.every((f) => f.user_id === users[i] && f.run_id === handles[i]!.run_id)).toBe(true)
        expect(runInvariants(s.frames)).toEqual([])
      })
      expect(yield* engines.activeRuns).toBe(0)
      expect(yield* engines.liveEngines).toBe(0)
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("start refuses an unknown agent before starting anything", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const recorded = yield* RecordedEvents
      const context = yield* UserExecutionContext.make({ user_id: "alice" })
      const error = yield* Effect.flip(engines.start(context, "wizard", "x"))
      expect(error._tag).toBe("UnknownAgentError")
      expect(yield* recorded.all).toEqual([])
      expect(yield* engines.activeRuns).toBe(0)
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("interrupt(run_id) stops a run mid-flight; it still ends with agent_stopped and agent_completed cancelled", () =>
    Effect.gen(function*() {
      const engines = yield* ExecutionEngineFactory
      const recorded = yield* RecordedEvents
      const context = yield* UserExecutionContext.make({ user_id: "alice" })
      const handle = yield* engines.start(context, "ticker", "steps=500 interval_ms=1000")
      yield* recorded.waitFor((e) => e.run_id === context.run_id && e.type === "agent_thinking")
      expect(yield* engines.activeRuns).toBe(1)
      expect(yield* engines.interrupt(context.run_id)).toBe(true)
      expect(yield* engines.interrupt(context.run_id)).toBe(false)
      const outcome = yield* handle.await
      const events = yield* recorded.ofRun(context.run_id)
      // the awaited outcome is exactly what the client was told
      const completed = events.at(-1)
      expect(completed?.type === "agent_completed" && {
        status: completed.status,
        final_response: completed.final_response,
        duration_ms: completed.duration_ms
      }).toEqual(outcome)
      expect(outcome.status).toBe("cancelled")
      expect(events.slice(-2).map((e) => e.type)).toEqual(["agent_stopped", "agent_completed"])
      expect(events.at(-2)).toMatchObject({ reason: "user_request" })
      expect(runInvariants(events)).toEqual([])
      expect(yield* engines.liveEngines).toBe(0)
    }).pipe(Effect.provide(RecordingRuntime)))

  it.effect("closing the runtime (shutdown) ends every run with its terminal events", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const services = yield* Layer.buildWithScope(RecordingRuntime, scope)
      const engines = services.mapUnsafe.get(ExecutionEngineFactory.key) as ExecutionEngineFactory["Service"]
      const recorded = services.mapUnsafe.get(RecordedEvents.key) as RecordedEvents["Service"]
      for (const user_id of ["a", "b"]) {
        yield* engines.start(yield* UserExecutionContext.make({ user_id }), "supervisor", "what is 1+1")
        yield* engines.start(yield* UserExecutionContext.make({ user_id }), "ticker", "steps=100 interval_ms=500")
      }
      yield* recorded.waitFor((e) => e.type === "agent_thinking" && e.agent_name === "ticker" && e.user_id === "b")
      yield* Scope.close(scope, Exit.void)
      const all = yield* recorded.all
      const runIds = [...new Set(all.map((e) => e.run_id))]
      expect(runIds.length).toBe(4)
      for (const run_id of runIds) expect(runInvariants(all.filter((e) => e.run_id === run_id))).toEqual([])
    }))
})
