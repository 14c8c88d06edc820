/**
 * RedisInstance: one instance's Redis plumbing, shared by the Redis layers
 * (bridge, admission, run control).
 *
 * Per instance it holds exactly two Redis connections: the command connection
 * (node-redis through `@effect/platform-node`'s `NodeRedis`, also offered as
 * `Redis.Redis` and `NodeRedis.NodeRedis` for other Redis layers) and one
 * subscriber connection that carries every channel this instance listens to
 * (channels are SUBSCRIBEd when their first local listener arrives and
 * UNSUBSCRIBEd when the last one leaves). Both reconnect with capped
 * exponential backoff (50 ms doubling, at most 2 s, plus up to 200 ms jitter)
 * for as long as the layer lives; only the first connection may fail, as a
 * typed `RedisError` at startup.
 *
 * `publish` is fire-and-forget on the command connection: commands are written
 * in call order on one socket, so two publishes issued in order reach Redis
 * (and every subscriber) in that order. While the connection is down a publish
 * is dropped and counted, never queued (a long outage would grow the offline
 * queue without bound) and never failed.
 *
 * The instance id (`instance_id`) tags what this instance publishes, the
 * admission slots it holds, the runs it owns in the run log and its lease
 * (`InstanceLeaseRedis`).
 *
 * @module
 */
import { NodeRedis } from "@effect/platform-node"
import { Context, Effect, Layer, References, type Scope } from "effect"
import { Redis } from "effect/persistence"
import { createClient } from "redis"
import { RedisStartError, redisStartReason, redisTarget } from "../services/RedisStartError.ts"
import { generateId } from "../services/UserExecutionContext.ts"

/** The node-redis client behind `NodeRedis`. */
export type RedisClient = NodeRedis.NodeRedis["Service"]["client"]

/** Counters of one instance's Redis traffic (monotonic since start). */
export interface RedisStats {
  /** Publishes written to the command connection. */
  published: number
  /** Publishes dropped because the command connection was down, or `MAX_PUBLISHES_IN_FLIGHT` were unanswered. */
  dropped: number
  /** Publishes written and not answered yet. */
  inFlight: number
  /** Publishes kept while the command connection is down, sent in order when it is back. */
  queued: number
  /** Publishes Redis or the socket failed after they were written. */
  failed: number
  /** Messages received on the subscriber connection. */
  received: number
  /** Channels currently subscribed on the subscriber connection. */
  channels: number
}

/** Called with each message of a subscribed channel, on the subscriber socket's callback (must not throw). */
export type ChannelListener = (message: string, channel: string) => void

export class RedisInstance extends Context.Service<RedisInstance, {
  /** This instance's id: `[A-Za-z0-9._:-]`, unique per process start. */
  readonly instance_id: string
  /** The command connection (shared; also behind `Redis.Redis`). */
  readonly client: RedisClient
  /** Effect's Redis service on the same connection (`eval` loads scripts once, then EVALSHA). */
  readonly redis: Redis.Redis["Service"]
  /** True while the command connection is up. */
  readonly isReady: () => boolean
  /** Publishes `message` on `channel` without waiting; dropped (counted) while Redis is down. */
  readonly publish: (channel: string, message: string) => void
  /**
   * Listens to `channel` on the one subscriber connection until the scope
   * closes. Completes once Redis acknowledged the SUBSCRIBE when the
   * connection is up (at most `ACK_TIMEOUT_MS`: a stalled Redis holds no
   * registration); while it is down, at once (subscribed on reconnect).
   * Closing the scope likewise waits for the UNSUBSCRIBE of the channel's last
   * registration, as long at most.
   * Every call is one registration, even with a listener already registered on
   * `channel` (the same function may be passed once per socket): the channel
   * stays subscribed until each has ended, and a listener registered several
   * times is still called once per message.
   */
  readonly subscribe: (channel: string, listener: ChannelListener) => Effect.Effect<void, never, Scope.Scope>
  /** Waits until both connections are up (at once when they are). */
  readonly whenReady: Effect.Effect<void>
  /** Redis connections this instance holds (command + subscriber). */
  readonly connections: () => number
  readonly stats: RedisStats
}>()("agentwire/RedisInstance") {}

/** Lua defining `now_ms()`: Redis's own clock in ms, so every instance's scripts agree on time. */
export const LUA_NOW_MS = `local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end`

/**
 * Publishes written to Redis and not answered yet, at most (per instance);
 * past it a publish is dropped and counted (`stats.dropped`), as during an
 * outage. About 10k frames of a few hundred bytes: a few MB held at worst.
 */
export const MAX_PUBLISHES_IN_FLIGHT = 10_000

/** Key and channel names. User keys share the hash tag `{u:<user_id>}` (one cluster slot per user). */
export const keys = {
  /** Channel of a user's events (bridge fan-out). */
  userEvents: (user_id: string) => `agentwire:{u:${user_id}}:events`,
  /** ZSET run_id → slot expiry (ms since epoch, Redis clock): the user's admitted runs. */
  userSlots: (user_id: string) => `agentwire:{u:${user_id}}:slots`,
  /** HASH run_id → `instance_id \t thread_id \t agent_name`: who runs each slot. */
  userRuns: (user_id: string) => `agentwire:{u:${user_id}}:runs`,
  /** HASH of a remembered client request_id (fingerprint and run), expiring with the idempotency window. */
  userRequest: (user_id: string, request_id: string) => `agentwire:{u:${user_id}}:req:${request_id}`,
  /** ZSET request_id → expiry (ms, Redis clock): the user's remembered request_ids (an erase forgets them). */
  userRequests: (user_id: string) => `agentwire:{u:${user_id}}:reqs`,
  /** STRING with a TTL: a start this instance gave up on (`run_id`); its admission is undone and refused should it still reach Redis. */
  userCancelled: (user_id: string, run_id: string) => `agentwire:{u:${user_id}}:cancelled:${run_id}`,
  /** Channel of control messages to one instance (stop requests and their replies). */
  instanceControl: (instance_id: string) => `agentwire:instance:${instance_id}:control`
}

/** Options of `layer`. */
export interface RedisInstanceOptions {
  /** `redis://[user:password@]host:port[/db]` */
  readonly url: string
  /** This instance's id; generated (`inst_…`) when omitted. */
  readonly instanceId?: string | undefined
  /**
   * Publishes made while the command connection is down are kept (in order,
   * within `MAX_PUBLISHES_IN_FLIGHT`) and sent when it is back, if the outage
   * lasted less than this, in ms (default `DEFAULT_OUTAGE_QUEUE_MS`); after a
   * longer one they are dropped and counted. Keep it under the instance lease
   * (`AgentRuntime.layerRedis` uses half of it): past the lease another
   * instance may have closed the runs, and their late events would contradict the log.
   */
  readonly outageQueueMs?: number | undefined
}

/** Default of `outageQueueMs`: half the default instance lease (10 s). */
export const DEFAULT_OUTAGE_QUEUE_MS = 5_000

const INSTANCE_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** Backoff of a reconnect attempt: 50 ms doubling, at most 2 s, plus jitter. */
export const reconnectDelay = (retries: number): number => Math.min(2 ** retries * 50, 2000) + Math.floor(Math.random() * 200)

/** How long startup waits for Redis to answer (`probe`), in milliseconds. */
export const PROBE_TIMEOUT_MS = 5000
/** How long a SUBSCRIBE or UNSUBSCRIBE waits for Redis's acknowledgement, in milliseconds (then it goes on without it). */
export const ACK_TIMEOUT_MS = 1000
/** How long a Redis connection's close may wait for unanswered commands at shutdown before it is destroyed, in milliseconds. */
export const CLOSE_TIMEOUT_MS = 1000

/**
 * Connects once to `url` with a plain node-redis client and PINGs: fails with a
 * `RedisStartError` naming `host:port` and `variable` (never the password)
 * when Redis refuses the connection or the credentials, or does not answer
 * within `timeoutMs` (a Redis that accepts TCP but never answers: stopped,
 * wedged, not Redis). The client is destroyed however it ends, also when the
 * probe is interrupted (SIGTERM during startup). Run before building clients
 * whose own connect has no bound (`NodeRedis`).
 */
export const probe = (url: string, options: { readonly variable?: string | undefined; readonly timeoutMs?: number | undefined } = {}): Effect.Effect<void, RedisStartError> =>
  Effect.callback<void, RedisStartError>((resume) => {
    const timeoutMs = options.timeoutMs ?? PROBE_TIMEOUT_MS
    const failure = (reason: string) => new RedisStartError({ target: redisTarget(url), variable: options.variable ?? "AGENTWIRE_REDIS_URL", reason })
    const client = createClient({ url, disableOfflineQueue: true, socket: { connectTimeout: timeoutMs, reconnectStrategy: false } })
    client.on("error", () => {}) // the failure is connect's or PING's rejection
    let settled = false
    const end = () => {
      settled = true
      clearTimeout(timer)
      if (client.isOpen) client.destroy()
    }
    const timer = setTimeout(() => {
      if (settled) return
      end()
      resume(Effect.fail(failure(`did not answer within ${timeoutMs / 1000} s`)))
    }, timeoutMs)
    client.connect().then(() => client.ping()).then(
      () => {
        if (settled) return
        end()
        resume(Effect.void)
      },
      (cause: unknown) => {
        if (settled) return
        end()
        resume(Effect.fail(failure(redisStartReason(cause))))
      }
    )
    return Effect.sync(end)
  })

/**
 * Logs a connection's outage once (a warning when it drops, an info line when
 * it is back) instead of once per failed reconnect attempt; also keeps
 * node-redis from rethrowing an unhandled `error` event.
 */
export const reportOutages = (client: RedisClient, name: string, runSync: <A, E>(effect: Effect.Effect<A, E>) => A) => {
  let down = false
  client.on("error", (cause: unknown) => {
    if (down) return
    down = true
    runSync(Effect.logWarning(`redis ${name} connection lost; reconnecting with backoff`, redisStartReason(cause)))
  })
  client.on("ready", () => {
    if (!down) return
    down = false
    runSync(Effect.logInfo(`redis ${name} connection back`))
  })
}

/**
 * Closes `client` at shutdown, waiting at most `CLOSE_TIMEOUT_MS` for its
 * unanswered commands; then (or at once when it is down) destroys it, so a
 * Redis that stopped answering cannot hold shutdown. Also settles a
 * `close()` already waiting (node-redis resolves it on destroy).
 */
export const closeBounded = (client: RedisClient): Effect.Effect<void> =>
  Effect.promise(() => {
    if (!client.isOpen) return Promise.resolve()
    if (!client.isReady) {
      client.destroy()
      return Promise.resolve()
    }
    let timer: ReturnType<typeof setTimeout> | undefined
    return Promise.race([
      client.close().catch(() => undefined),
      new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          if (client.isOpen) client.destroy()
          resolve()
        }, CLOSE_TIMEOUT_MS)
      })
    ]).finally(() => clearTimeout(timer))
  })

/**
 * `NodeRedis.layer(options)` without its per-attempt warnings (`NodeRedis
 * client error` on every failed reconnect): its own logs are kept to errors;
 * outages are reported once each (`reportOutages`), and the client is closed
 * within `CLOSE_TIMEOUT_MS` at shutdown (`closeBounded`, which runs before
 * NodeRedis' own unbounded close).
 */
export const layerNodeRedisQuiet = (
  options: Parameters<typeof NodeRedis.layer>[0],
  name: string
): Layer.Layer<NodeRedis.NodeRedis | Redis.Redis, Redis.RedisError> =>
  Layer.effectContext(Effect.gen(function*() {
    const context = yield* Layer.build(NodeRedis.layer(options).pipe(Layer.provide(Layer.succeed(References.MinimumLogLevel, "Error"))))
    const { client } = Context.get(context, NodeRedis.NodeRedis)
    reportOutages(client, name, Effect.runSyncWith(yield* Effect.context<never>()))
    yield* Effect.addFinalizer(() => closeBounded(client))
    return context
  }))

/** Builds the plumbing over an already connected `NodeRedis`; exposed for hand wiring. */
export const make = (instanceId?: string, options: { readonly outageQueueMs?: number | undefined } = {}) =>
  Effect.gen(function*() {
    const outageQueueMs = options.outageQueueMs ?? DEFAULT_OUTAGE_QUEUE_MS
    const instance_id = instanceId ?? generateId("conn").replace(/^conn_/, "inst_")
    if (!INSTANCE_ID.test(instance_id)) return yield* Effect.die(new Error(`instance id must match ${INSTANCE_ID}: ${instance_id}`))
    const { client } = yield* NodeRedis.NodeRedis
    const redis = yield* Redis.Redis
    const runSync = Effect.runSyncWith(yield* Effect.context<never>())
    const stats: RedisStats = { published: 0, dropped: 0, inFlight: 0, queued: 0, failed: 0, received: 0, channels: 0 }
    // publishes skip node-redis's per-command timeout: it arms an AbortSignal.timeout per command whose
    // timer fires (building a DOMException) even after the reply, about 8 % of a busy instance's CPU;
    // what bounds them instead is MAX_PUBLISHES_IN_FLIGHT (a stalled connection cannot hold more)
    const publisher = client.withCommandOptions({ timeout: 0 })

    // the one subscriber connection; it inherits the client's options (and reconnect strategy). Destroyed
    // (never closed: close() waits for unanswered commands) when the scope ends, also mid-connect
    const subscriber = yield* Effect.acquireRelease(
      Effect.sync(() => client.duplicate()),
      (duplicate) => Effect.sync(() => { if (duplicate.isOpen) duplicate.destroy() })
    )
    reportOutages(subscriber, "subscriber", runSync)
    yield* Effect.tryPromise({ try: () => subscriber.connect(), catch: (cause) => new Redis.RedisError({ cause }) })

    let publishFailureLogged = false
    // publishes of an outage, in order; sent when the connection is back, unless the outage outlived outageQueueMs
    let queue: Array<readonly [string, string]> = []
    let downSince: number | undefined
    const wentDown = () => {
      downSince ??= Date.now()
    }
    client.on("error", wentDown)
    client.on("reconnecting", wentDown)
    client.on("ready", () => {
      const outage = downSince === undefined ? 0 : Date.now() - downSince
      downSince = undefined
      const waiting = queue
      queue = []
      stats.queued = 0
      if (outage >= outageQueueMs) {
        stats.dropped += waiting.length
        return
      }
      for (const [channel, message] of waiting) send(channel, message)
    })
    const publish = (channel: string, message: string) => {
      if (stats.inFlight + queue.length >= MAX_PUBLISHES_IN_FLIGHT) {
        stats.dropped++
        return
      }
      if (!client.isReady) {
        wentDown()
        queue.push([channel, message])
        stats.queued = queue.length
        return
      }
      send(channel, message)
    }
    const send = (channel: string, message: string) => {
      stats.published++
      stats.inFlight++
      publisher.sendCommand(["PUBLISH", channel, message]).then(
        () => {
          stats.inFlight--
          publishFailureLogged = false
        },
        (cause: unknown) => {
          stats.inFlight--
          stats.failed++
          if (publishFailureLogged) return
          publishFailureLogged = true
          runSync(Effect.logWarning("redis publish failed; local delivery goes on", String(cause)))
        }
      )
    }

    // channel → local listener → its registrations: each `subscribe` counts once, even with a listener
    // already registered (the bridge passes one function for every socket of a user), so a channel is
    // UNSUBSCRIBEd only when its last registration ends; each distinct listener is called once per message
    const listeners = new Map<string, Map<ChannelListener, number>>()
    const dispatch = (message: string, channel: string) => {
      stats.received++
      const registered = listeners.get(channel)
      if (registered !== undefined) for (const listener of registered.keys()) listener(message, channel)
    }
    const subscribe = (channel: string, listener: ChannelListener) =>
      Effect.acquireRelease(
        Effect.suspend(() => {
          let registered = listeners.get(channel)
          if (registered !== undefined) {
            registered.set(listener, (registered.get(listener) ?? 0) + 1)
            return Effect.void
          }
          registered = new Map([[listener, 1]])
          listeners.set(channel, registered)
          stats.channels++
          const ack = subscriber.subscribe(channel, dispatch)
          // while the connection is down the SUBSCRIBE waits for the reconnect: do not wait for it
          if (!subscriber.isReady) {
            ack.catch(() => undefined)
            return Effect.void
          }
          // bounded: a Redis that holds the connection but does not answer cannot hold a socket's registration
          return Effect.tryPromise(() => ack).pipe(
            Effect.timeout(ACK_TIMEOUT_MS),
            Effect.catchCause((cause) => Effect.logWarning("redis SUBSCRIBE not acknowledged; it stands once Redis answers", cause))
          )
        }),
        () =>
          Effect.suspend(() => {
            const registered = listeners.get(channel)
            const count = registered?.get(listener)
            if (registered === undefined || count === undefined) return Effect.void
            if (count > 1) {
              registered.set(listener, count - 1)
              return Effect.void
            }
            registered.delete(listener)
            if (registered.size > 0) return Effect.void
            listeners.delete(channel)
            stats.channels--
            if (!subscriber.isOpen) return Effect.void
            const ack = subscriber.unsubscribe(channel, dispatch)
            // waited for while the connection is up (so a closed scope means unsubscribed), not during an outage
            if (!subscriber.isReady) {
              ack.catch(() => undefined)
              return Effect.void
            }
            // bounded likewise: a stalled Redis cannot hold a socket's close, or shutdown
            return Effect.ignore(Effect.tryPromise(() => ack).pipe(Effect.timeout(ACK_TIMEOUT_MS)))
          })
      )

    const bothReady = () => client.isReady && subscriber.isReady
    const whenReady: Effect.Effect<void> = Effect.callback<void>((resume) => {
      if (bothReady()) return resume(Effect.void)
      const check = () => {
        if (!bothReady()) return
        client.off("ready", check)
        subscriber.off("ready", check)
        resume(Effect.void)
      }
      client.on("ready", check)
      subscriber.on("ready", check)
      return Effect.sync(() => {
        client.off("ready", check)
        subscriber.off("ready", check)
      })
    })

    return RedisInstance.of({
      instance_id,
      client,
      redis,
      isReady: () => client.isReady,
      publish,
      subscribe,
      whenReady,
      connections: () => (client.isOpen ? 1 : 0) + (subscriber.isOpen ? 1 : 0),
      stats
    })
  })

/**
 * `NodeRedis` (and `Redis.Redis`) connected to `url`, reconnecting with
 * backoff once it was up. Redis is probed first (`probe`): refusing, or not
 * answering within `PROBE_TIMEOUT_MS`, is a `RedisStartError`; the first
 * connection failing after it is a `RedisError`. Outages are logged once each,
 * and shutdown closes the client within `CLOSE_TIMEOUT_MS`.
 */
export const layerNodeRedis = (url: string): Layer.Layer<NodeRedis.NodeRedis | Redis.Redis, Redis.RedisError | RedisStartError> =>
  Layer.unwrap(Effect.sync(() => {
    let connected = false
    const base = layerNodeRedisQuiet({
      url,
      socket: {
        // before the first connection: fail (startup error); after it: retry for ever, with backoff
        reconnectStrategy: (retries: number, cause: Error) => (connected ? reconnectDelay(retries) : cause)
      }
    }, "command")
    return Layer.effectContext(Effect.gen(function*() {
      // a Redis that accepts connections but never answers would hold NodeRedis' connect (and its close) for ever
      yield* probe(url)
      const context = yield* Layer.build(base)
      connected = true
      return context
    }))
  }))

/** The plumbing over an existing `NodeRedis` (share one command connection with other Redis layers). */
export const layerFromNodeRedis = (
  instanceId?: string,
  options: { readonly outageQueueMs?: number | undefined } = {}
): Layer.Layer<RedisInstance, Redis.RedisError, NodeRedis.NodeRedis | Redis.Redis> => Layer.effect(RedisInstance, make(instanceId, options))

/**
 * One instance's Redis: `RedisInstance`, plus `NodeRedis` and `Redis.Redis`
 * on the same command connection, for the other Redis layers.
 */
export const layer = (options: RedisInstanceOptions): Layer.Layer<RedisInstance | NodeRedis.NodeRedis | Redis.Redis, Redis.RedisError | RedisStartError> =>
  layerFromNodeRedis(options.instanceId, options).pipe(Layer.provideMerge(layerNodeRedis(options.url)))
