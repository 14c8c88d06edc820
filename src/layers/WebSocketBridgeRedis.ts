/**
 * `WebSocketBridge` over Redis pub/sub, for several instances.
 *
 * `emit` delivers at once to this instance's own connections of the event's
 * user (exactly as the in-memory bridge does, so sockets on the run's own
 * instance keep getting events while Redis is down), then publishes the frame
 * once on the user's channel `agentwire:{u:<user_id>}:events`, prefixed with
 * this instance's id. Every instance with a connection of that user is
 * SUBSCRIBEd to that channel on its one subscriber connection (SUBSCRIBE when
 * the user's first local connection registers, UNSUBSCRIBE when the last one
 * leaves) and delivers what another instance published to its own
 * connections of the user; its own publications it skips.
 *
 * Per-user channels rather than one channel with filtering: Redis routes each
 * event only to instances that have a socket of its user, so an instance
 * never parses events of users it does not serve (with one shared channel,
 * every instance would receive and parse every event of the cluster).
 *
 * Encoding: the frame is encoded once per event (or taken from the emitter);
 * each receiving instance parses it once, whatever its number of sockets.
 * Order: publishes are written in emit order on the one command connection,
 * and Redis delivers a channel's messages in publish order, so events of one
 * run reach every connection in `seq` order. Delivery is synchronous (the
 * publish is not awaited), so the bridge offers `deliverSync`.
 * Outage: a publish while Redis is down is dropped and counted
 * (`RedisInstance.stats`); emits never fail. `connectionCount` is local.
 *
 * Requires `RedisInstance` (see `layers/RedisInstance.ts`).
 *
 * @module
 */
import { Effect, Layer } from "effect"
import type { AgentEvent } from "../protocol/Protocol.ts"
import { type BridgeConnection, WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as RedisInstance from "./RedisInstance.ts"
import * as ConnectionRegistry from "./ConnectionRegistry.ts"

/** Separates the publishing instance's id from the frame in a channel message. */
const SEPARATOR = "\n"

/** Builds the Redis bridge over this instance's `RedisInstance`. */
export const make = Effect.gen(function*() {
  const redis = yield* RedisInstance.RedisInstance
  const prefix = `${redis.instance_id}${SEPARATOR}`
  const local = ConnectionRegistry.make()
  let malformed = 0

  const deliver = (event: AgentEvent, encoded?: string) => {
    const frame = encoded ?? JSON.stringify(event)
    local.deliver(event, frame)
    redis.publish(RedisInstance.keys.userEvents(event.user_id), prefix + frame)
  }

  // one listener for every user channel: the message names its publisher, the event names its user
  const onMessage = (message: string) => {
    if (message.startsWith(prefix)) return
    const cut = message.indexOf(SEPARATOR)
    if (cut < 0) {
      malformed++
      return
    }
    const frame = message.slice(cut + 1)
    let event: AgentEvent
    try {
      event = JSON.parse(frame) as AgentEvent
    } catch {
      malformed++
      return
    }
    if (typeof event !== "object" || event === null || typeof event.user_id !== "string" || typeof event.run_id !== "string" || typeof event.seq !== "number") {
      malformed++
      return
    }
    local.deliver(event, frame)
  }

  const register = (connection: BridgeConnection) =>
    Effect.andThen(
      Effect.acquireRelease(Effect.sync(() => local.add(connection)), () => Effect.sync(() => local.remove(connection))),
      // the channel is subscribed once per user (refcounted in RedisInstance)
      redis.subscribe(RedisInstance.keys.userEvents(connection.user_id), onMessage)
    )

  return Object.assign(
    WebSocketBridge.of({
      register,
      emit: (event, frame) => Effect.sync(() => deliver(event, frame)),
      deliverSync: deliver,
      connectionCount: (user_id) => Effect.sync(() => local.count(user_id))
    }),
    { malformed: () => malformed }
  )
})

/** The Redis bridge; requires `RedisInstance`. */
export const layer: Layer.Layer<WebSocketBridge, never, RedisInstance.RedisInstance> = Layer.effect(WebSocketBridge, make)
