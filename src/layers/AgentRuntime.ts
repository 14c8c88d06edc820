/**
 * The agent runtime in one layer: `ExecutionEngineFactory`,
 * `AgentInstanceFactory`, `RunAdmission` and `RunLog` (in memory) and `WebSocketBridge`,
 * wired in the one order that type-checks. It requires the `AgentRegistry`,
 * which is where an embedder's agents (and their own requirements) come in.
 * The run limits, timeout and log retention come from `AgentwireConfig` when one is provided
 * around it, else from the documented defaults.
 *
 * @module
 */
import { Layer } from "effect"
import type { AgentInstanceFactory } from "../services/AgentInstanceFactory.ts"
import type { AgentRegistry } from "../services/AgentRegistry.ts"
import type { ExecutionEngineFactory } from "../services/ExecutionEngineFactory.ts"
import type { RunAdmission } from "../services/RunAdmission.ts"
import type { RunLog } from "../services/RunLog.ts"
import type { WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as AgentInstanceFactoryLayer from "./AgentInstanceFactory.ts"
import * as ExecutionEngineFactoryLayer from "./ExecutionEngineFactory.ts"
import * as RunAdmissionMemory from "./RunAdmissionMemory.ts"
import * as RunLogMemory from "./RunLogMemory.ts"
import { Cause, Effect, Option, Redacted } from "effect"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { RedisStartError, redisStartReason, redisTarget } from "../services/RedisStartError.ts"
import type { RunControl } from "../services/RunControl.ts"
import * as InstanceLeaseRedis from "./InstanceLeaseRedis.ts"
import * as RedisInstance from "./RedisInstance.ts"
import * as RunAdmissionRedis from "./RunAdmissionRedis.ts"
import * as RunControlRedis from "./RunControlRedis.ts"
import * as RunLogRedis from "./RunLogRedis.ts"
import * as WebSocketBridgeRedis from "./WebSocketBridgeRedis.ts"
import * as WebSocketBridgeMemory from "./WebSocketBridgeMemory.ts"

/**
 * The two factories, still requiring a `WebSocketBridge`: provide the in-memory
 * one, a recording test double, or your own.
 */
export const layerWithoutBridge: Layer.Layer<
  ExecutionEngineFactory | AgentInstanceFactory | RunAdmission | RunLog,
  never,
  WebSocketBridge | AgentRegistry
> = ExecutionEngineFactoryLayer.layer.pipe(
  Layer.provideMerge(AgentInstanceFactoryLayer.layer),
  Layer.provideMerge(RunAdmissionMemory.layerConfig),
  Layer.provideMerge(RunLogMemory.layerConfig)
)

/** The runtime over the in-memory bridge. */
export const layer: Layer.Layer<ExecutionEngineFactory | AgentInstanceFactory | RunAdmission | RunLog | WebSocketBridge, never, AgentRegistry> =
  layerWithoutBridge.pipe(Layer.provideMerge(WebSocketBridgeMemory.layer))

/**
 * `RunLogRedis.layerConfig` on the Redis at `url` (the runtime's), whatever
 * `AgentwireConfig.redisUrl` says: an embedder calling `layerRedis(url)` need
 * not repeat the URL in the config.
 */
const runLogAt = (url: Redacted.Redacted<string>): Layer.Layer<RunLog, RedisStartError, AgentwireConfig> =>
  Layer.unwrap(Effect.gen(function*() {
    const config = yield* AgentwireConfig
    return RunLogRedis.layerConfig.pipe(Layer.provide(Layer.succeed(AgentwireConfig, { ...config, redisUrl: Option.some(url) })))
  }))

/**
 * The runtime for several instances sharing the Redis at `url`
 * (`AGENTWIRE_REDIS_URL`): the bridge fans events out to every instance, the
 * run log, admission (per-user limit, idempotent starts) and stops work
 * across instances. One Redis connection pair per instance (`RedisInstance`)
 * serves the bridge, admission and stops; the run log has its own. Redis
 * unreachable or refusing the credentials at startup is a `RedisStartError`
 * naming `host:port`, never the password. Each instance holds a lease
 * (`AGENTWIRE_INSTANCE_LEASE_MS`, `InstanceLeaseRedis`): the runs of an
 * instance that lost it are closed by another with `INSTANCE_LOST`, and the
 * log refuses the lost instance's later appends to them. Requires
 * `AgentwireConfig` (the limits, retention and lease settings).
 */
export const layerRedis = (url: Redacted.Redacted<string>): Layer.Layer<
  ExecutionEngineFactory | AgentInstanceFactory | RunAdmission | RunLog | WebSocketBridge | RunControl | InstanceLeaseRedis.InstanceLease,
  RedisStartError,
  AgentRegistry | AgentwireConfig
> =>
  ExecutionEngineFactoryLayer.layer.pipe(
    Layer.provideMerge(AgentInstanceFactoryLayer.layer),
    Layer.provideMerge(RunAdmissionRedis.layerConfig()),
    Layer.provideMerge(RunControlRedis.layer()),
    Layer.provideMerge(InstanceLeaseRedis.layerConfig),
    Layer.provideMerge(WebSocketBridgeRedis.layer),
    Layer.provideMerge(runLogAt(url)),
    // which mode this process runs in, said once at startup (the in-memory line is in Agentwire.layerApp)
    Layer.provideMerge(Layer.effectDiscard(Effect.gen(function*() {
      const instance = yield* RedisInstance.RedisInstance
      yield* Effect.logInfo(`running on Redis at ${redisTarget(Redacted.value(url))}, instance ${instance.instance_id} (AGENTWIRE_REDIS_URL)`)
    }))),
    Layer.provideMerge(
      Layer.unwrap(Effect.map(AgentwireConfig, (config) =>
        // publishes of an outage are sent when Redis is back only if it was short against the lease
        RedisInstance.layer({ url: Redacted.value(url), outageQueueMs: config.instanceLeaseMs / 2 }))).pipe(
        Layer.catchCause((cause) =>
          Layer.effect(
            RedisInstance.RedisInstance,
            Effect.fail(
              new RedisStartError({ target: redisTarget(Redacted.value(url)), variable: "AGENTWIRE_REDIS_URL", reason: redisStartReason(Cause.squash(cause)) })
            )
          )
        )
      )
    )
  )
