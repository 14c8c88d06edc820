/**
 * In-memory `WebSocketBridge` for one process.
 *
 * Connections are kept per user in copy-on-write arrays: registering is rare,
 * emitting is the hot path, so `emit` encodes the event once and loops over a
 * plain array. Delivery is synchronous, so events of one run reach each socket
 * in emit order.
 *
 * @module
 */
import { Effect, Layer } from "effect"
import type { AgentEvent } from "../protocol/Protocol.ts"
import { WebSocketBridge } from "../services/WebSocketBridge.ts"
import * as ConnectionRegistry from "./ConnectionRegistry.ts"

/** Builds the in-memory bridge; exposed for embedders who wire services by hand. */
export const make = Effect.sync(() => {
  const local = ConnectionRegistry.make()

  // encoded already (the run emitter's frames): one lookup; otherwise no connection of the user here: nothing to encode
  const deliver = (event: AgentEvent, encoded?: string) => {
    if (encoded !== undefined) local.deliver(event, encoded)
    else if (local.has(event.user_id)) local.deliver(event, JSON.stringify(event))
  }

  return WebSocketBridge.of({
    register: (connection) => Effect.acquireRelease(Effect.sync(() => local.add(connection)), () => Effect.sync(() => local.remove(connection))),
    registerSync: local.add,
    unregisterSync: local.remove,
    emit: (event, frame) => Effect.sync(() => deliver(event, frame)),
    deliverSync: deliver,
    connectionCount: (user_id) => Effect.sync(() => local.count(user_id))
  })
})

/** The in-memory bridge. No requirements. */
export const layer: Layer.Layer<WebSocketBridge> = Layer.effect(WebSocketBridge, make)
