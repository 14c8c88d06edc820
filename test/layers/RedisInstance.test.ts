/**
 * The per-instance Redis plumbing against a real `redis-server`: publishes are
 * fire-and-forget but bounded, so a Redis that stops answering (SIGSTOP: the
 * TCP connection stays up) cannot make an instance hold every frame it
 * publishes. Skipped with the install command when Redis is missing.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as RedisInstance from "../../src/layers/RedisInstance.ts"
import { describeRedis, instanceLayer, server } from "../fixtures/redisLayers.ts"

/** Polls `holds` every 20 ms (no event announces that Redis answered a fire-and-forget publish). */
const eventually = (holds: () => boolean, timeoutMs = 10_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while (!holds()) {
      if (Date.now() > deadline) return yield* Effect.die(new Error(`condition not reached in ${timeoutMs} ms`))
      yield* Effect.sleep(20)
    }
  })

describeRedis("RedisInstance", () => {
  describe("publish", () => {
    it.live("a Redis that stops answering holds at most MAX_PUBLISHES_IN_FLIGHT publishes; the rest are dropped and counted; all settle when it answers again", () =>
      Effect.gen(function*() {
        const instance = Context.get(yield* Layer.build(instanceLayer()), RedisInstance.RedisInstance)
        const pid = server.current!.pid()!
        const extra = 500
        process.kill(pid, "SIGSTOP")
        try {
          for (let i = 0; i < RedisInstance.MAX_PUBLISHES_IN_FLIGHT + extra; i++) instance.publish("bounded", `frame ${i}`)
          expect(instance.stats.inFlight).toBe(RedisInstance.MAX_PUBLISHES_IN_FLIGHT)
          expect(instance.stats.dropped).toBe(extra)
        } finally {
          process.kill(pid, "SIGCONT")
        }
        yield* eventually(() => instance.stats.inFlight === 0)
        expect(instance.stats.published).toBe(RedisInstance.MAX_PUBLISHES_IN_FLIGHT)
        expect(instance.stats.failed).toBe(0)
        // and publishing goes on
        instance.publish("bounded", "after")
        expect(instance.stats.published).toBe(RedisInstance.MAX_PUBLISHES_IN_FLIGHT + 1)
      }).pipe(Effect.scoped), 30_000)
  })

  describe("subscribe", () => {
    it.live("a Redis that stops answering (SIGSTOP) holds neither a registration nor its release (acknowledgements wait at most ACK_TIMEOUT_MS)", () =>
      Effect.gen(function*() {
        const instance = Context.get(yield* Layer.build(instanceLayer()), RedisInstance.RedisInstance)
        const pid = server.current!.pid()!
        let stopped = true
        process.kill(pid, "SIGSTOP")
        // a safety net: before the fix both waited until Redis answered again
        const safety = setTimeout(() => {
          stopped = false
          process.kill(pid, "SIGCONT")
        }, 8000)
        yield* Effect.addFinalizer(() => Effect.sync(() => {
          clearTimeout(safety)
          process.kill(pid, "SIGCONT")
        }))
        yield* Effect.scoped(instance.subscribe("stalled", () => {}))
        expect(stopped).toBe(true)
        clearTimeout(safety)
        process.kill(pid, "SIGCONT")
        yield* instance.whenReady
      }).pipe(Effect.scoped), 30_000)

    it.live("publishes made while the connection is down are kept in order and sent when it is back; after an outage longer than outageQueueMs they are dropped", () =>
      Effect.gen(function*() {
        const build = (outageQueueMs: number) =>
          Effect.map(
            Layer.build(Layer.unwrap(Effect.sync(() => RedisInstance.layer({ url: server.current!.url, outageQueueMs })))),
            (ctx) => Context.get(ctx, RedisInstance.RedisInstance)
          )
        const patient = yield* build(60_000)
        const hasty = yield* build(1)
        yield* Effect.promise(() => server.current!.kill())
        yield* eventually(() => !patient.isReady() && !hasty.isReady())
        for (let i = 0; i < 50; i++) {
          patient.publish("outage", `frame ${i}`)
          hasty.publish("outage", `frame ${i}`)
        }
        expect([patient.stats.queued, patient.stats.published, patient.stats.dropped]).toEqual([50, 0, 0])
        yield* Effect.promise(() => server.current!.restart())
        // back: the patient one sends what it kept; the outage outlived the hasty one's 1 ms, so it drops it
        yield* eventually(() => patient.isReady() && hasty.isReady() && patient.stats.inFlight === 0 && patient.stats.queued === 0)
        expect([patient.stats.published, patient.stats.failed, patient.stats.dropped]).toEqual([50, 0, 0])
        expect([hasty.stats.published, hasty.stats.queued, hasty.stats.dropped]).toEqual([0, 0, 50])
      }).pipe(Effect.scoped), 30_000)
  })
})
