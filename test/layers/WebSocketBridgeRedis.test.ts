import { expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Layer } from "effect"
import type { AgentEvent } from "../../src/protocol/Protocol.ts"
import * as RedisInstance from "../../src/layers/RedisInstance.ts"
import * as WebSocketBridgeRedis from "../../src/layers/WebSocketBridgeRedis.ts"
import { WebSocketBridge } from "../../src/services/WebSocketBridge.ts"
import { bridgeSuite } from "../fixtures/bridge-suite.ts"
import { thinking } from "../fixtures/events.ts"
import { describeRedis, instanceLayer, server } from "../fixtures/redisLayers.ts"
import { watchedConnection } from "../fixtures/events.ts"

const bridgeLayer = (instanceId?: string) => WebSocketBridgeRedis.layer.pipe(Layer.provideMerge(instanceLayer(instanceId)))


/** Builds one "instance" (its RedisInstance and bridge) in the test's scope. */
const instance = (instanceId: string) =>
  Effect.map(Layer.build(bridgeLayer(instanceId)), (context) => ({
    bridge: Context.get(context, WebSocketBridge),
    redis: Context.get(context, RedisInstance.RedisInstance)
  }))

describeRedis("WebSocketBridgeRedis", () => {
  bridgeSuite("redis", Layer.unwrap(Effect.sync(() => bridgeLayer())))

  it.effect("two instances: an event emitted on A reaches the user's connection on each instance once, in order", () =>
    Effect.gen(function*() {
      const a = yield* instance("inst-a")
      const b = yield* instance("inst-b")
      const onA = watchedConnection("a1", "alice")
      const onB = watchedConnection("b1", "alice")
      const bobOnB = watchedConnection("b2", "bob")
      yield* a.bridge.register(onA.connection)
      yield* b.bridge.register(onB.connection)
      yield* b.bridge.register(bobOnB.connection)
      for (let seq = 1; seq <= 100; seq++) yield* a.bridge.emit(thinking("alice", seq))
      // local delivery is immediate
      expect(onA.frames.map((f) => f.seq)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1))
      // an event emitted on B reaches A too; once it arrived, B's own publications arrived long before
      yield* b.bridge.emit(thinking("alice", 1, "run-on-b"))
      yield* onA.waitFor((e) => e.run_id === "run-on-b")
      yield* onB.waitFor((e) => e.run_id === "run-alice" && e.seq === 100)
      const ofRun = (frames: ReadonlyArray<AgentEvent>, run_id: string) => frames.filter((f) => f.run_id === run_id).map((f) => f.seq)
      const expected = Array.from({ length: 100 }, (_, i) => i + 1)
      expect(ofRun(onB.frames, "run-alice")).toEqual(expected)
      expect(ofRun(onA.frames, "run-alice")).toEqual(expected)
      expect(ofRun(onA.frames, "run-on-b")).toEqual([1])
      expect(ofRun(onB.frames, "run-on-b")).toEqual([1])
      expect(bobOnB.frames).toEqual([])
      // connectionCount stays local; two Redis connections per instance
      expect(yield* a.bridge.connectionCount("alice")).toBe(1)
      expect(yield* b.bridge.connectionCount()).toBe(2)
      expect(a.redis.connections()).toBe(2)
      expect(b.redis.connections()).toBe(2)
      // one channel per user with a local connection
      expect(b.redis.stats.channels).toBe(2)
    }).pipe(Effect.scoped))

  it.effect("a user's channel is subscribed once per instance, and unsubscribed when the last local connection leaves", () =>
    Effect.gen(function*() {
      const a = yield* instance("inst-a")
      const b = yield* instance("inst-b")
      const channel = RedisInstance.keys.userEvents("carol")
      const numsub = Effect.promise(() => a.redis.client.sendCommand(["PUBSUB", "NUMSUB", channel]))
      yield* a.bridge.register(watchedConnection("a1", "carol").connection)
      yield* Effect.scoped(Effect.gen(function*() {
        yield* b.bridge.register(watchedConnection("b1", "carol").connection)
        yield* b.bridge.register(watchedConnection("b2", "carol").connection)
        expect(b.redis.stats.channels).toBe(1)
        expect(yield* numsub).toEqual([channel, 2])
      }))
      expect(b.redis.stats.channels).toBe(0)
      expect(yield* numsub).toEqual([channel, 1])
    }).pipe(Effect.scoped))

  it.effect("two sockets of one user on B, one closes (or is dropped as a slow consumer): the other still gets events emitted on A", () =>
    Effect.gen(function*() {
      const a = yield* instance("inst-a")
      const b = yield* instance("inst-b")
      const channel = RedisInstance.keys.userEvents("erin")
      const numsub = Effect.promise(() => a.redis.client.sendCommand(["PUBSUB", "NUMSUB", channel]))
      const tab1 = watchedConnection("b1", "erin")
      const tab2 = watchedConnection("b2", "erin")
      yield* b.bridge.register(tab2.connection)
      // tab1's registration ends with its scope: a closed socket, or one dropped as a slow consumer
      yield* Effect.scoped(b.bridge.register(tab1.connection))
      expect(yield* b.bridge.connectionCount("erin")).toBe(1)
      expect(b.redis.stats.channels).toBe(1)
      expect(yield* numsub).toEqual([channel, 1])
      yield* a.bridge.emit(thinking("erin", 1))
      yield* tab2.waitFor((e) => e.seq === 1)
      expect(tab2.frames.map((e) => e.seq)).toEqual([1])
      // a third socket and its close: still one subscription, tab2 still served, each event once
      yield* Effect.scoped(Effect.gen(function*() {
        const tab3 = watchedConnection("b3", "erin")
        yield* b.bridge.register(tab3.connection)
        yield* a.bridge.emit(thinking("erin", 2))
        yield* tab3.waitFor((e) => e.seq === 2)
      }))
      yield* a.bridge.emit(thinking("erin", 3))
      yield* tab2.waitFor((e) => e.seq === 3)
      expect(tab2.frames.map((e) => e.seq)).toEqual([1, 2, 3])
      expect(yield* numsub).toEqual([channel, 1])
    }).pipe(Effect.scoped))

  it.effect("RedisInstance.subscribe counts registrations, not distinct listeners: the same listener twice, released once, stays subscribed", () =>
    Effect.gen(function*() {
      const { redis } = yield* instance("inst-c")
      const channel = "agentwire:test:same-listener"
      const got: Array<string> = []
      const arrived = Deferred.makeUnsafe<void>()
      const listener = (message: string) => {
        got.push(message)
        if (message === "second") Deferred.doneUnsafe(arrived, Effect.void)
      }
      yield* redis.subscribe(channel, listener)
      yield* Effect.scoped(redis.subscribe(channel, listener))
      expect(redis.stats.channels).toBe(1)
      yield* Effect.promise(() => redis.client.sendCommand(["PUBLISH", channel, "first"]))
      yield* Effect.promise(() => redis.client.sendCommand(["PUBLISH", channel, "second"]))
      yield* Deferred.await(arrived)
      // called once per message, however many registrations share the listener
      expect(got).toEqual(["first", "second"])
    }).pipe(Effect.scoped))

  // live clock: the reconnect backoff and the probes run on real time
  it.live("Redis killed mid-emit: local delivery goes on, nothing fails; after a restart fan-out works again", () =>
    Effect.gen(function*() {
      const a = yield* instance("inst-a")
      const b = yield* instance("inst-b")
      const onA = watchedConnection("a1", "dora")
      const onB = watchedConnection("b1", "dora")
      yield* a.bridge.register(onA.connection)
      yield* b.bridge.register(onB.connection)
      for (let seq = 1; seq <= 10; seq++) yield* a.bridge.emit(thinking("dora", seq))
      yield* onB.waitFor((e) => e.seq === 10)

      yield* Effect.promise(() => server.current!.kill())
      // during the outage: every emit succeeds and reaches the local connection at once
      for (let seq = 11; seq <= 30; seq++) yield* a.bridge.emit(thinking("dora", seq))
      expect(onA.frames.map((f) => f.seq)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1))
      const deliveredToBDuringOutage = onB.frames.filter((f) => f.seq > 10).length

      yield* Effect.promise(() => server.current!.restart())
      yield* a.redis.whenReady
      yield* b.redis.whenReady
      // B resubscribes on reconnect; A cannot observe when that SUBSCRIBE lands, so it emits probes until one arrives
      let seq = 30
      const arrived = Deferred.makeUnsafe<void>()
      yield* Effect.forkChild(onB.waitFor((e) => e.seq > 30).pipe(Effect.andThen(Deferred.succeed(arrived, undefined))))
      while (!Deferred.isDoneUnsafe(arrived)) {
        yield* a.bridge.emit(thinking("dora", ++seq))
        yield* Deferred.await(arrived).pipe(Effect.timeoutOption("50 millis"))
      }
      const after = onB.frames.filter((f) => f.seq > 30).map((f) => f.seq)
      expect(after.length).toBeGreaterThan(0)
      // in order, no duplicates, on both sides
      const seqsB = onB.frames.map((f) => f.seq)
      expect(seqsB).toEqual([...seqsB].sort((x, y) => x - y))
      expect(new Set(seqsB).size).toBe(seqsB.length)
      expect(onA.frames.map((f) => f.seq)).toEqual(Array.from({ length: seq }, (_, i) => i + 1))
      // what B got during the outage is recorded: nothing crosses a dead Redis
      expect(deliveredToBDuringOutage).toBe(0)
      // publishes during the outage were dropped (connection known down) or failed (written to the dying socket)
      expect(a.redis.stats.published + a.redis.stats.dropped).toBe(seq)
    }).pipe(Effect.scoped), { timeout: 20_000 })
})
