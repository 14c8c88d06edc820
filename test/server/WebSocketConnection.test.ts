import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Fiber, Layer, Option, Redacted } from "effect"
import { EventEmitter } from "node:events"
import type { IncomingMessage } from "node:http"
import type { Duplex } from "node:stream"
import type { WebSocket } from "ws"
import * as AgentRuntime from "../../src/layers/AgentRuntime.ts"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"
import * as AuthJwt from "../../src/layers/AuthJwt.ts"
import * as WebSocketBridgeMemory from "../../src/layers/WebSocketBridgeMemory.ts"
import { decodeServerMessage, type ServerMessage } from "../../src/protocol/Protocol.ts"
import * as WebSocketConnection from "../../src/server/WebSocketConnection.ts"
import { selectProtocol, tokenOf } from "../../src/server/WebSocketConnection.ts"
import type { Auth } from "../../src/services/Auth.ts"
import { ExecutionEngineFactory } from "../../src/services/ExecutionEngineFactory.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { RunLog } from "../../src/services/RunLog.ts"
import { WebSocketBridge } from "../../src/services/WebSocketBridge.ts"
import * as RedisLayers from "../fixtures/redisLayers.ts"
import { describeRedis } from "../fixtures/redisLayers.ts"
import { QuietLogs, registry } from "../fixtures/runtime.ts"

const request = (headers: Record<string, string>) => ({ headers }) as unknown as IncomingMessage
const url = (query = "") => new URL(`http://localhost/ws${query}`)

describe("handshake", () => {
  it("takes the token from the Authorization header, then the jwt. subprotocol, then ?token", () => {
    expect(tokenOf(request({ authorization: "Bearer aaa" }), url("?token=ccc"))).toBe("aaa")
    expect(tokenOf(request({ "sec-websocket-protocol": "agentwire.v1, jwt.bbb" }), url("?token=ccc"))).toBe("bbb")
    expect(tokenOf(request({}), url("?token=ccc"))).toBe("ccc")
    expect(tokenOf(request({ authorization: "Basic xyz" }), url())).toBeUndefined()
    expect(tokenOf(request({ "sec-websocket-protocol": "jwt." }), url("?token="))).toBeUndefined()
  })

  it("selects agentwire.v1 when offered, else echoes jwt.<token>, else none", () => {
    expect(selectProtocol(new Set(["jwt.t", "agentwire.v1"]))).toBe("agentwire.v1")
    expect(selectProtocol(new Set(["jwt.t"]))).toBe("jwt.t")
    expect(selectProtocol(new Set(["chat"]))).toBe(false)
  })
})

// ---------------------------------------------------------------------------
// a bridge whose registration does I/O (as the Redis one subscribes): frames wait for it, none is lost

/** The in-memory bridge without its synchronous registration; `register` waits until `gate` opens. */
const gatedBridge = (gate: Deferred.Deferred<void>) =>
  Layer.effect(
    WebSocketBridge,
    Effect.map(WebSocketBridgeMemory.make, (memory) =>
      WebSocketBridge.of({
        register: (connection) => Effect.andThen(Deferred.await(gate), memory.register(connection)),
        emit: memory.emit,
        connectionCount: memory.connectionCount
      }))
  )

/** A `ws` stand-in driven by the test: `receive` emits a client frame; every frame sent is decoded and kept. */
const fakeSocket = () => {
  const ws = Object.assign(new EventEmitter(), {
    readyState: 1,
    bufferedAmount: 0,
    isPaused: false,
    sent: [] as Array<ServerMessage>,
    waiters: [] as Array<() => void>,
    send(frame: string) {
      ws.sent.push(decodeServerMessage(frame))
      for (const w of ws.waiters.splice(0)) w()
    },
    close() {},
    terminate() {
      ws.readyState = 3
    },
    pause() {
      ws.isPaused = true
    },
    resume() {
      ws.isPaused = false
    }
  })
  const socket = Object.assign(new EventEmitter(), { writableLength: 0, cork() {}, uncork() {} })
  const receive = (message: unknown) => ws.emit("message", Buffer.from(JSON.stringify(message)), false)
  /** Resumes once `n` frames of `type` were sent. */
  const sentCount = (type: ServerMessage["type"], n: number): Effect.Effect<void> =>
    Effect.callback<void>((resume) => {
      const check = () => {
        if (ws.sent.filter((m) => m.type === type).length >= n) resume(Effect.void)
        else ws.waiters.push(check)
      }
      check()
    })
  return { ws, socket, receive, sentCount }
}

describe("a bridge whose registration does I/O (as the Redis one subscribes)", () => {
  it.live("frames that arrive while the connection registers are handled once it has, in order", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const context = yield* Layer.build(
        AuthJwt.layer.pipe(
          Layer.provideMerge(AgentRuntime.layerWithoutBridge),
          Layer.provideMerge(gatedBridge(gate)),
          Layer.provide(registry),
          Layer.provide(QuietLogs),
          Layer.provideMerge(AgentwireConfig.layer({ jwtSecret: Option.some(Redacted.make("registration-suite-secret-0123456789")) }))
        )
      )
      const scope = yield* Effect.scope
      const shared = yield* WebSocketConnection.makeShared({
        options: { maxMessageBytes: 65536, clockSkewMs: 0, maxFramesPerSecond: 0 },
        limits: { maxSocketBytes: 8 * 1024 * 1024 },
        fork: (effect) => void Effect.runFork(effect),
        scope,
        onClose: () => {}
      }).pipe(Effect.provide(context))
      const t = fakeSocket()
      WebSocketConnection.open(shared, t.ws as unknown as WebSocket, t.socket as unknown as Duplex, { user_id: "slow-register", expires_at: Date.now() + 60_000 })
      expect(t.ws.sent.map((m) => m.type)).toEqual(["connection_established"])
      t.receive({ type: "ping" })
      t.receive({ type: "start_agent", agent: "echo", user_request: "hello", request_id: "r-1" })
      t.receive({ type: "ping" })
      // nothing is handled before the bridge registered the connection: its run's events would be lost
      yield* Effect.yieldNow
      expect(t.ws.sent.map((m) => m.type)).toEqual(["connection_established"])
      yield* Deferred.succeed(gate, undefined)
      yield* t.sentCount("agent_completed", 1)
      yield* t.sentCount("pong", 2)
      const types = t.ws.sent.map((m) => m.type)
      expect(types.filter((t) => t === "pong" || t === "run_accepted")).toEqual(["pong", "run_accepted", "pong"])
      expect(types).toContain("agent_started")
      t.ws.readyState = 3
      t.ws.emit("close", 1000)
    }).pipe(Effect.scoped), 10_000)
})

describe("an idle connection", () => {
  it.live("holds no fiber: a frame starts one, which ends once the inbox is empty; closing ends the connection", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(
        AuthJwt.layer.pipe(
          Layer.provideMerge(AgentRuntime.layer),
          Layer.provide(registry),
          Layer.provide(QuietLogs),
          Layer.provideMerge(AgentwireConfig.layer({ jwtSecret: Option.some(Redacted.make("idle-suite-secret-0123456789abcdef")) }))
        )
      )
      const fibers: Array<Fiber.Fiber<void>> = []
      const closed: Array<WebSocketConnection.Connection> = []
      const shared = yield* WebSocketConnection.makeShared({
        options: { maxMessageBytes: 65536, clockSkewMs: 0, maxFramesPerSecond: 0 },
        limits: { maxSocketBytes: 8 * 1024 * 1024 },
        fork: (effect) => void fibers.push(Effect.runFork(effect)),
        scope: yield* Effect.scope,
        onClose: (connection) => void closed.push(connection)
      }).pipe(Effect.provide(context))
      const bridge = Context.get(context, WebSocketBridge)
      const t = fakeSocket()
      const connection = WebSocketConnection.open(shared, t.ws as unknown as WebSocket, t.socket as unknown as Duplex, { user_id: "idle", expires_at: Date.now() + 60_000 })
      expect(fibers).toHaveLength(0)
      expect(yield* bridge.connectionCount("idle")).toBe(1)
      t.receive({ type: "ping" })
      t.receive({ type: "ping" })
      expect(fibers).toHaveLength(1)
      yield* Fiber.join(fibers[0]!)
      expect(t.ws.sent.map((m) => m.type)).toEqual(["connection_established", "pong", "pong"])
      expect(connection.liveness.handled).toBe(2)
      // the next frame, once idle again, gets a fiber of its own
      t.receive({ type: "ping" })
      expect(fibers).toHaveLength(2)
      yield* Fiber.join(fibers[1]!)
      expect(t.ws.sent.filter((m) => m.type === "pong")).toHaveLength(3)
      t.ws.readyState = 3
      t.ws.emit("close", 1000)
      expect(closed).toEqual([connection])
      expect(yield* bridge.connectionCount("idle")).toBe(0)
    }).pipe(Effect.scoped), 10_000)
})

// ---------------------------------------------------------------------------
// a command that changes state, received just before the socket closed, is carried out (only its answer is lost)

/**
 * The engine of `context` with a `stop` that says when it was called (`entered`), then waits for `gate` before it
 * stops anything; `interrupted` is done when such a stop was interrupted before it got there.
 */
const gatedStop = (real: ExecutionEngineFactory["Service"], gate: Deferred.Deferred<void>) =>
  Effect.gen(function*() {
    const entered = yield* Deferred.make<void>()
    const interrupted = yield* Deferred.make<void>()
    const engine = ExecutionEngineFactory.of({
      ...real,
      stop: (selector) =>
        Effect.andThen(
          Effect.andThen(Deferred.succeed(entered, undefined), Deferred.await(gate)),
          real.stop(selector)
        ).pipe(Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined)))
    })
    return { engine, entered, interrupted }
  })

/** Services an instance of these tests has (in memory, or on Redis). */
type Instance = Context.Context<ExecutionEngineFactory | RunLog | WebSocketBridge | Auth>

/**
 * A run of `user_id` on `runOn` (100 s on its own), a `stop_agent` of it received by a connection on `stopOn`, whose
 * socket closes once the engine's stop was called and every frame was handled, before the stop is carried out: the
 * run must stop all the same. The connection's answer is what is lost.
 */
const stopThenClose = (runOn: Instance, stopOn: Instance, user_id: string) =>
  Effect.gen(function*() {
    const runner = Context.get(runOn, ExecutionEngineFactory)
    const run = yield* runner.start(yield* UserExecutionContext.make({ user_id }), "ticker", "steps=1000 interval_ms=100")
    expect(yield* runner.runState(user_id, run.run_id)).toBe("active")
    const gate = yield* Deferred.make<void>()
    const { engine, entered, interrupted } = yield* gatedStop(Context.get(stopOn, ExecutionEngineFactory), gate)
    const fibers: Array<Fiber.Fiber<void>> = []
    const shared = yield* WebSocketConnection.makeShared({
      options: { maxMessageBytes: 65536, clockSkewMs: 0, maxFramesPerSecond: 0 },
      limits: { maxSocketBytes: 8 * 1024 * 1024 },
      fork: (effect) => void fibers.push(Effect.runFork(effect)),
      scope: yield* Effect.scope,
      onClose: () => {}
    }).pipe(Effect.provide(Context.add(stopOn, ExecutionEngineFactory, engine)))
    /** Waits until no frame handler of the connection runs (its frames handled, the handler ended). */
    const idle = Effect.suspend(() => Effect.forEach(fibers, Fiber.await, { discard: true }))
    const t = fakeSocket()
    WebSocketConnection.open(shared, t.ws as unknown as WebSocket, t.socket as unknown as Duplex, { user_id, expires_at: Date.now() + 60_000 })
    t.receive({ type: "stop_agent", run_id: run.run_id, request_id: "s-1" })
    // the stop reached the engine and every frame was handled: the socket closes now, before the stop is carried out
    yield* Deferred.await(entered)
    yield* idle
    t.ws.readyState = 3
    t.ws.emit("close", 1006)
    yield* Deferred.succeed(gate, undefined)
    // either the stop was dropped with the connection's background work, or the run ends (stopped)
    const outcome = yield* Effect.raceFirst(
      Effect.as(Deferred.await(interrupted), "stop interrupted" as const),
      Effect.as(runner.drain(60_000), "run ended" as const)
    )
    expect(outcome).toBe("run ended")
    expect(yield* runner.runState(user_id, run.run_id)).toBe("ended")
    expect(yield* Deferred.isDone(interrupted)).toBe(false)
    expect((yield* Context.get(runOn, RunLog).summary(user_id, run.run_id)).status).toBe("cancelled")
    // the answer is what was dropped: the socket had closed
    expect(t.ws.sent.some((m) => m.type === "run_stopped")).toBe(false)
  })

const SECRET = Option.some(Redacted.make("stop-close-suite-secret-0123456789abc"))

describe("a stop_agent received just before the socket closed", () => {
  it.live("is carried out: the run stops, though the connection's background work ends with the socket", () =>
    Effect.gen(function*() {
      const built = yield* Layer.build(
        AuthJwt.layer.pipe(
          Layer.provideMerge(AgentRuntime.layer),
          Layer.provide(registry),
          Layer.provide(QuietLogs),
          Layer.provideMerge(AgentwireConfig.layer({ jwtSecret: SECRET }))
        )
      )
      yield* stopThenClose(built, built, "stop-close")
    }).pipe(Effect.scoped), 20_000)
})

describeRedis("a stop_agent received by another instance just before the socket closed", () => {
  it.live("is carried out: the run stops on the instance that runs it", () =>
    Effect.gen(function*() {
      const url = Redacted.make(RedisLayers.url())
      const scope = yield* Effect.scope
      const instance = AuthJwt.layer.pipe(
        Layer.provideMerge(AgentRuntime.layerRedis(url)),
        Layer.provide(registry),
        Layer.provide(QuietLogs),
        Layer.provideMerge(AgentwireConfig.layer({ jwtSecret: SECRET }))
      )
      // a memo map each: no layer is shared between the two instances
      const a = yield* Layer.buildWithMemoMap(instance, yield* Layer.makeMemoMap, scope)
      const b = yield* Layer.buildWithMemoMap(instance, yield* Layer.makeMemoMap, scope)
      yield* stopThenClose(a, b, "stop-close-redis")
    }).pipe(Effect.scoped), 30_000)
})
