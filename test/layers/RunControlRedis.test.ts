import { expect, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Queue } from "effect"
import * as AgentInstanceFactoryLayer from "../../src/layers/AgentInstanceFactory.ts"
import { DEFAULT_RUN_LIMITS } from "../../src/layers/AgentwireConfig.ts"
import * as ExecutionEngineFactoryLayer from "../../src/layers/ExecutionEngineFactory.ts"
import * as RunAdmissionRedis from "../../src/layers/RunAdmissionRedis.ts"
import * as RedisInstance from "../../src/layers/RedisInstance.ts"
import * as RunControlRedis from "../../src/layers/RunControlRedis.ts"
import * as RunLogMemory from "../../src/layers/RunLogMemory.ts"
import * as WebSocketBridgeRedis from "../../src/layers/WebSocketBridgeRedis.ts"
import type { AgentEvent } from "../../src/protocol/Protocol.ts"
import { ExecutionEngineFactory } from "../../src/services/ExecutionEngineFactory.ts"
import { RunControl } from "../../src/services/RunControl.ts"
import * as UserExecutionContext from "../../src/services/UserExecutionContext.ts"
import { WebSocketBridge } from "../../src/services/WebSocketBridge.ts"
import { startProxy } from "../fixtures/proxy.ts"
import { describeRedis, instanceLayer, server } from "../fixtures/redisLayers.ts"
import { QuietLogs, registry } from "../fixtures/runtime.ts"
import { watchedConnection } from "../fixtures/events.ts"

/** One instance: engine factory over the Redis bridge, admission and run control (run log in memory); `redisUrl`: through a proxy. */
const instanceRuntime = (instanceId: string, redisUrl?: string, stopTimeoutMs?: number) =>
  ExecutionEngineFactoryLayer.layer.pipe(
    Layer.provideMerge(AgentInstanceFactoryLayer.layer),
    Layer.provideMerge(RunAdmissionRedis.layer({ ...DEFAULT_RUN_LIMITS, maxRunsPerUser: 10 })),
    Layer.provideMerge(RunLogMemory.layerConfig),
    Layer.provideMerge(RunControlRedis.layer({ stopTimeoutMs })),
    Layer.provideMerge(WebSocketBridgeRedis.layer),
    Layer.provideMerge(redisUrl === undefined ? instanceLayer(instanceId) : RedisInstance.layer({ url: redisUrl, instanceId })),
    Layer.provide(registry),
    Layer.provide(QuietLogs)
  )

const instance = (instanceId: string, redisUrl?: string, stopTimeoutMs?: number) =>
  Effect.map(Layer.build(instanceRuntime(instanceId, redisUrl, stopTimeoutMs)), (context) => ({
    redis: Context.get(context, RedisInstance.RedisInstance),
    engines: Context.get(context, ExecutionEngineFactory),
    bridge: Context.get(context, WebSocketBridge),
    control: Context.get(context, RunControl)
  }))

const socket = watchedConnection

const isRootEnd = (run_id: string) => (e: AgentEvent) => e.run_id === run_id && e.type === "agent_completed" && e.depth === 0

describeRedis("RunControlRedis (stop anywhere)", () => {
  it.live("a stop sent to B stops the run executing on A; B's answer comes after the run's terminal events reached B's socket", () =>
    Effect.gen(function*() {
      const a = yield* instance("ctl-a")
      const b = yield* instance("ctl-b")
      const onB = socket("b1", "alice")
      yield* b.bridge.register(onB.connection)
      const context = yield* UserExecutionContext.make({ user_id: "alice" })
      const handle = yield* a.engines.start(context, "hanging-tool", "")
      // the run's tool is running on A; B's socket sees it through the fan-out
      yield* onB.waitFor((e) => e.run_id === context.run_id && e.type === "tool_executing")
      expect(yield* b.engines.runState("alice", context.run_id)).toBe("active")
      expect(yield* b.engines.runState("mallory", context.run_id)).toBe("unknown")
      expect(yield* b.engines.activeRuns).toBe(0)

      const stopped = yield* b.engines.stop({ user_id: "alice", run_id: context.run_id })
      expect(stopped).toEqual([context.run_id])
      // the terminal events were delivered to B's socket before the answer
      const end = onB.frames.find(isRootEnd(context.run_id))
      expect(end?.type === "agent_completed" ? end.status : undefined).toBe("cancelled")
      expect((yield* handle.await).status).toBe("cancelled")
      // in order, once each
      const seqs = onB.frames.filter((e) => e.run_id === context.run_id).map((e) => e.seq)
      expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1))
      // stopped again: nothing to stop
      expect(yield* b.engines.stop({ user_id: "alice", run_id: context.run_id })).toEqual([])
    }).pipe(Effect.scoped), { timeout: 15_000 })

  it.live("by thread and all: a stop on B selects runs on A and on B; other users' runs are never touched", () =>
    Effect.gen(function*() {
      const a = yield* instance("ctl-a")
      const b = yield* instance("ctl-b")
      const onA = socket("a1", "bob")
      yield* a.bridge.register(onA.connection)
      const onAeve = socket("a2", "eve")
      yield* a.bridge.register(onAeve.connection)
      const start = (on: typeof a, user_id: string, thread_id: string) =>
        Effect.flatMap(UserExecutionContext.make({ user_id, thread_id }), (context) =>
          Effect.map(on.engines.start(context, "hanging-tool", ""), () => context.run_id))
      const t1OnA = yield* start(a, "bob", "t1")
      const t2OnA = yield* start(a, "bob", "t2")
      const t1OnB = yield* start(b, "bob", "t1")
      const eveOnA = yield* start(a, "eve", "t1")
      for (const run_id of [t1OnA, t2OnA, t1OnB]) yield* onA.waitFor((e) => e.run_id === run_id && e.type === "tool_executing")
      yield* onAeve.waitFor((e) => e.run_id === eveOnA && e.type === "tool_executing")
      expect((yield* b.control.remoteRuns("bob")).map((r) => r.run_id).sort()).toEqual([t1OnA, t2OnA].sort())

      expect([...(yield* b.engines.stop({ user_id: "bob", thread_id: "t1" }))].sort()).toEqual([t1OnA, t1OnB].sort())
      expect(yield* b.engines.stop({ user_id: "bob" })).toEqual([t2OnA])
      // eve's run on A still runs
      expect(yield* a.engines.runState("eve", eveOnA)).toBe("active")
      expect(yield* b.engines.stop({ user_id: "mallory", run_id: eveOnA })).toEqual([])
      expect(yield* a.engines.runState("eve", eveOnA)).toBe("active")
      expect(yield* b.engines.stop({ user_id: "eve" })).toEqual([eveOnA])
    }).pipe(Effect.scoped), { timeout: 15_000 })

  it.live("Redis unreachable from the stopper: a run executing there stops at once; a run on another instance is a clear RunControlUnavailableError, not a false []", () =>
    Effect.gen(function*() {
      const proxy = yield* Effect.promise(() => startProxy(server.current!.port))
      yield* Effect.addFinalizer(() => Effect.promise(() => proxy.close()))
      const a = yield* instance("out-a")
      const b = yield* instance("out-b", `redis://127.0.0.1:${proxy.port}`)
      const onA = yield* a.engines.start(yield* UserExecutionContext.make({ user_id: "olga" }), "hanging-tool", "")
      const onBContext = yield* UserExecutionContext.make({ user_id: "olga" })
      const onB = yield* b.engines.start(onBContext, "hanging-tool", "")
      yield* Effect.repeat(b.engines.runState("olga", onA.run_id), { until: (state) => state === "active" })
      proxy.setDown(true)
      proxy.cutAll()
      yield* Effect.repeat(Effect.sync(() => b.redis.isReady()), { until: (ready) => !ready })
      // its own run: stopped here, without waiting for Redis
      expect(yield* b.engines.stop({ user_id: "olga", run_id: onB.run_id }).pipe(Effect.timeout("2 seconds"))).toEqual([onB.run_id])
      expect((yield* onB.await).status).toBe("cancelled")
      // A's run: B cannot reach A; it says so at once
      const refused = yield* Effect.flip(b.engines.stop({ user_id: "olga", run_id: onA.run_id })).pipe(Effect.timeout("2 seconds"))
      expect(refused).toMatchObject({ _tag: "RunControlUnavailableError", retry_after_ms: 1000 })
      expect(yield* a.engines.runState("olga", onA.run_id)).toBe("active")
      proxy.setDown(false)
      yield* b.redis.whenReady
      expect(yield* b.engines.stop({ user_id: "olga", run_id: onA.run_id })).toEqual([onA.run_id])
    }).pipe(Effect.scoped), { timeout: 20_000 })

  it.live("an owner that does not answer: after stopTimeoutMs, a run whose slot still lives is RunControlUnavailableError; once its slot is gone (closed by recovery), []", () =>
    Effect.gen(function*() {
      const b = yield* instance("mute-b", undefined, 300)
      // a "paused" owner: it listens on its control channel (the stop is delivered) and never answers
      const ghost = Context.get(yield* Layer.build(instanceLayer("mute-ghost")), RedisInstance.RedisInstance)
      const heard = yield* Queue.unbounded<string>()
      yield* ghost.subscribe(RedisInstance.keys.instanceControl("mute-ghost"), (message) => void Queue.offerUnsafe(heard, message))
      const slots = RedisInstance.keys.userSlots("mute")
      const runs = RedisInstance.keys.userRuns("mute")
      yield* ghost.redis.send("ZADD", slots, String(Date.now() + 60_000), "run_ghost")
      yield* ghost.redis.send("HSET", runs, "run_ghost", "mute-ghost\tth\tticker")
      expect(yield* b.engines.runState("mute", "run_ghost")).toBe("active")
      const refused = yield* Effect.flip(b.engines.stop({ user_id: "mute", run_id: "run_ghost" }))
      expect(refused).toMatchObject({ _tag: "RunControlUnavailableError" })
      // its lease expired meanwhile and another instance closed the run (freeing its slot): it had ended
      const slotGone = Effect.andThen(ghost.redis.send("ZREM", slots, "run_ghost"), ghost.redis.send("HDEL", runs, "run_ghost"))
      yield* Queue.take(heard)
      const stop = yield* Effect.forkChild(b.engines.stop({ user_id: "mute", thread_id: "th" }))
      // the owner got the second request (and stays silent): now its run is closed elsewhere
      yield* Queue.take(heard)
      yield* slotGone
      expect(yield* Fiber.join(stop)).toEqual([])
    }).pipe(Effect.scoped), { timeout: 20_000 })
})
