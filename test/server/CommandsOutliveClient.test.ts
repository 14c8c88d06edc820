/**
 * A command that changes state and that the server received is carried out even when its client goes away right
 * after; only its answer is lost (docs/protocol.md). Each test holds the engine's `stop` until the client is gone
 * (the request's socket closed, or the connection's background scope closing), then lets it go on: before the fix
 * the stop was interrupted there and the run went on running.
 */
import { NodeHttpServerRequest } from "@effect/platform-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Option, Redacted, Scope } from "effect"
import { HttpServerRequest } from "effect/http"
import * as AgentInstanceFactoryLayer from "../../src/layers/AgentInstanceFactory.ts"
import * as AgentRuntime from "../../src/layers/AgentRuntime.ts"
import * as AgentwireConfigLayer from "../../src/layers/AgentwireConfig.ts"
import * as AuthJwt from "../../src/layers/AuthJwt.ts"
import * as ConversationStoreMemory from "../../src/layers/ConversationStoreMemory.ts"
import * as ExecutionEngineFactoryLayer from "../../src/layers/ExecutionEngineFactory.ts"
import * as RunAdmissionMemory from "../../src/layers/RunAdmissionMemory.ts"
import * as RunLogMemory from "../../src/layers/RunLogMemory.ts"
import * as WebSocketBridgeMemory from "../../src/layers/WebSocketBridgeMemory.ts"
import type { ServerMessage } from "../../src/protocol/Protocol.ts"
import * as Server from "../../src/server/Server.ts"
import * as ThreadRequests from "../../src/server/ThreadRequests.ts"
import { AgentwireServer } from "../../src/services/AgentwireServer.ts"
import { Auth } from "../../src/services/Auth.ts"
import { ConversationStore } from "../../src/services/ConversationStore.ts"
import { ExecutionEngineFactory } from "../../src/services/ExecutionEngineFactory.ts"
import { RunLog } from "../../src/services/RunLog.ts"
import { WebSocketBridge } from "../../src/services/WebSocketBridge.ts"
import { QuietLogs, registry } from "../fixtures/runtime.ts"

const SECRET = "commands-outlive-client-secret-0123456789"

/** What a test sees of the engine's held stops. */
interface Hold {
  readonly entered: Deferred.Deferred<void>
  readonly interrupted: Deferred.Deferred<void>
  /** Opened by the test (a stop outside an HTTP request waits for it). */
  readonly gate: Deferred.Deferred<void>
}

const makeHold = Effect.all({ entered: Deferred.make<void>(), interrupted: Deferred.make<void>(), gate: Deferred.make<void>() })

/**
 * Waits until the HTTP request of the calling handler, if any, lost its client (its response closed before it
 * ended: the platform has interrupted the handler then, if it could); outside a request, until `gate` opens.
 */
const clientGone = (hold: Hold) =>
  Effect.flatMap(Effect.serviceOption(HttpServerRequest.HttpServerRequest), (request) => {
    if (Option.isNone(request)) return Deferred.await(hold.gate)
    const response = NodeHttpServerRequest.toServerResponse(request.value)
    return Effect.callback<void>((resume) => {
      if (response.destroyed) return resume(Effect.void)
      // after the platform's own listener (added when the request came in), which interrupts the handler
      const onClose = () => resume(Effect.void)
      response.once("close", onClose)
      return Effect.sync(() => void response.off("close", onClose))
    })
  })

/** Says that `effect` was reached, then waits for the client to be gone before running it. */
const held = <A, E>(hold: Hold, effect: Effect.Effect<A, E>) =>
  Effect.andThen(Effect.andThen(Deferred.succeed(hold.entered, undefined), clientGone(hold)), effect).pipe(
    Effect.onInterrupt(() => Deferred.succeed(hold.interrupted, undefined))
  )

/** The engine with its `stop` (or its `start`) held until the client is gone. */
const holding = (real: ExecutionEngineFactory["Service"], hold: Hold, which: "stop" | "start" = "stop") =>
  ExecutionEngineFactory.of({
    ...real,
    ...(which === "stop"
      ? { stop: (selector) => held(hold, real.stop(selector)) }
      : { start: (context, agent, request, options) => held(hold, real.start(context, agent, request, options)) })
  })

/** Either the held stop was interrupted (the bug), or `ended` resumes (the command was carried out). */
const outcome = <A, E>(hold: Hold, ended: Effect.Effect<A, E>) =>
  Effect.raceFirst(
    Effect.as(Deferred.await(hold.interrupted), "interrupted" as const),
    Effect.as(ended, "carried out" as const)
  )

/** The server on a free port, its engine holding stops (or starts: `which`) until their client is gone (`hold`), with an in-memory history whose delete says so (`deleted`). */
const serverLayer = (hold: Hold, deleted: Deferred.Deferred<string>, which: "stop" | "start" = "stop") => {
  const engine = Layer.effect(ExecutionEngineFactory, Effect.gen(function*() {
    return holding(yield* ExecutionEngineFactory, hold, which)
  })).pipe(
    Layer.provide(ExecutionEngineFactoryLayer.layer)
  )
  const history = Layer.effect(
    ConversationStore,
    Effect.map(ConversationStoreMemory.make(), (store) =>
      ConversationStore.of({
        ...store,
        // every thread is the caller's (what a run records of its thread is not what is tested here)
        threadAccess: () => Effect.succeed("own" as const),
        deleteThread: (key) => Effect.as(Deferred.succeed(deleted, key.thread_id), true)
      }))
  )
  const runtime = engine.pipe(
    Layer.provideMerge(AgentInstanceFactoryLayer.layer),
    Layer.provideMerge(RunAdmissionMemory.layerConfig),
    Layer.provideMerge(RunLogMemory.layerConfig),
    Layer.provideMerge(WebSocketBridgeMemory.layer)
  )
  return Server.layer.pipe(
    Layer.provideMerge(AuthJwt.layer),
    Layer.provideMerge(runtime),
    Layer.provideMerge(history),
    Layer.provide(registry),
    Layer.provide(QuietLogs),
    Layer.provideMerge(AgentwireConfigLayer.layer({
      port: 0,
      jwtSecret: Option.some(Redacted.make(SECRET)),
      runLimits: { ...AgentwireConfigLayer.DEFAULT_RUN_LIMITS, runStartsPerSecond: 0, maxRunsPerUser: 20 }
    }))
  )
}

/** Sends a request and gives it up (aborts it) once `hold.entered`: the handler reached the engine's stop. */
const abortedOnceEntered = (hold: Hold, path: string, init: RequestInit) =>
  Effect.gen(function*() {
    const url = yield* AgentwireServer.useSync((s) => s.url)
    const controller = new AbortController()
    const sent = yield* Effect.forkChild(Effect.promise(() => fetch(`${url}${path}`, { ...init, signal: controller.signal }).then(() => "answered", () => "aborted")))
    yield* Deferred.await(hold.entered)
    controller.abort()
    expect(yield* Fiber.join(sent)).toBe("aborted")
  })

const startTicker = (token: string, body: Record<string, string> = {}) =>
  Effect.gen(function*() {
    const url = yield* AgentwireServer.useSync((s) => s.url)
    const answer = yield* Effect.promise(() =>
      fetch(`${url}/api/runs`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        // 100 s on its own
        body: JSON.stringify({ agent: "ticker", user_request: "steps=1000 interval_ms=100", ...body })
      }).then(async (res) => ({ status: res.status, json: await res.json() as { run_id: string } }))
    )
    expect(answer.status).toBe(202)
    return answer.json.run_id
  })

describe("a command the server received is carried out when the client goes away right after", () => {
  it.live("POST /api/runs/{run_id}/stop aborted once the handler reached the stop: the run stops", () =>
    Effect.gen(function*() {
      const hold = yield* makeHold
      const context = yield* Layer.build(serverLayer(hold, yield* Deferred.make<string>()))
      yield* Effect.gen(function*() {
        const token = yield* Auth.use((auth) => auth.issue("http-stop", 300))
        const run_id = yield* startTicker(token)
        const engines = yield* ExecutionEngineFactory
        expect(yield* engines.runState("http-stop", run_id)).toBe("active")
        yield* abortedOnceEntered(hold, `/api/runs/${run_id}/stop`, { method: "POST", headers: { authorization: `Bearer ${token}` } })
        expect(yield* outcome(hold, engines.drain(60_000))).toBe("carried out")
        expect(yield* engines.runState("http-stop", run_id)).toBe("ended")
        expect((yield* RunLog.use((log) => log.summary("http-stop", run_id))).status).toBe("cancelled")
      }).pipe(Effect.provide(context))
    }).pipe(Effect.scoped), 20_000)

  it.live("POST /api/runs aborted once its body was read and the handler reached the start: the run starts", () =>
    Effect.gen(function*() {
      const hold = yield* makeHold
      const context = yield* Layer.build(serverLayer(hold, yield* Deferred.make<string>(), "start"))
      yield* Effect.gen(function*() {
        const token = yield* Auth.use((auth) => auth.issue("http-start", 300))
        const bridge = yield* WebSocketBridge
        const started = yield* Deferred.make<string>()
        // the run's first event reaches the user's connections: this one stands for a socket of the user
        yield* bridge.register({
          id: "observer",
          user_id: "http-start",
          send: (_frame, event) => {
            if (event?.type === "agent_started") Deferred.doneUnsafe(started, Exit.succeed(event.run_id))
          }
        })
        yield* abortedOnceEntered(hold, "/api/runs", {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ agent: "ticker", user_request: "steps=3 interval_ms=1", request_id: "start-gone" })
        })
        expect(yield* outcome(hold, Deferred.await(started))).toBe("carried out")
      }).pipe(Effect.provide(context))
    }).pipe(Effect.scoped), 20_000)

  it.live("DELETE /api/threads/{thread_id} aborted once the handler reached the stop of its runs: its run stops and the thread is deleted", () =>
    Effect.gen(function*() {
      const hold = yield* makeHold
      const deleted = yield* Deferred.make<string>()
      const context = yield* Layer.build(serverLayer(hold, deleted))
      yield* Effect.gen(function*() {
        const token = yield* Auth.use((auth) => auth.issue("http-delete", 300))
        const run_id = yield* startTicker(token, { thread_id: "t-gone" })
        const engines = yield* ExecutionEngineFactory
        yield* abortedOnceEntered(hold, "/api/threads/t-gone", { method: "DELETE", headers: { authorization: `Bearer ${token}` } })
        expect(yield* outcome(hold, engines.drain(60_000))).toBe("carried out")
        expect(yield* engines.runState("http-delete", run_id)).toBe("ended")
        // and the deletion went on after the stop
        expect(yield* Deferred.await(deleted)).toBe("t-gone")
      }).pipe(Effect.provide(context))
    }).pipe(Effect.scoped), 20_000)
})

describe("a delete_thread received on a WebSocket whose connection closes right after", () => {
  it.live("is carried out: the thread's runs are stopped and the thread deleted; only the answer is dropped", () =>
    Effect.gen(function*() {
      const built = yield* Layer.build(
        AgentRuntime.layer.pipe(
          Layer.provide(registry),
          Layer.provide(QuietLogs),
          Layer.provideMerge(AgentwireConfigLayer.layer({ jwtSecret: Option.some(Redacted.make(SECRET)) }))
        )
      )
      const hold = yield* makeHold
      const deleted = yield* Deferred.make<string>()
      const store = yield* ConversationStoreMemory.make()
      const context = Context.add(
        Context.add(built, ExecutionEngineFactory, holding(Context.get(built, ExecutionEngineFactory), hold)),
        ConversationStore,
        ConversationStore.of({
          ...store,
          threadAccess: () => Effect.succeed("own" as const),
          deleteThread: (key) => Effect.as(Deferred.succeed(deleted, key.thread_id), true)
        })
      )
      // the connection's background scope, as `WebSocketConnection` makes one
      const scope = yield* Scope.make()
      const replies: Array<ServerMessage> = []
      const handler = yield* Scope.provide(ThreadRequests.makeHandler("ws-delete", (m) => void replies.push(m)), scope).pipe(Effect.provide(context))
      yield* handler({ type: "delete_thread", thread_id: "t-1", request_id: "d-1" })
      yield* Deferred.await(hold.entered)
      // the connection closes: its background scope closes (off the caller's stack, as `closeLater` does)
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
      yield* Deferred.succeed(hold.gate, undefined)
      expect(yield* outcome(hold, Deferred.await(deleted))).toBe("carried out")
      expect(yield* Deferred.await(deleted)).toBe("t-1")
      yield* Fiber.join(closing)
    }).pipe(Effect.scoped), 20_000)
})
