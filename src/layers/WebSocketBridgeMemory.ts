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
import { type BridgeConnection, WebSocketBridge } from "../services/WebSocketBridge.ts"

/** Builds the in-memory bridge; exposed for embedders who wire services by hand. */
export const make = Effect.sync(() => {
  const byUser = new Map<string, ReadonlyArray<BridgeConnection>>()
  let total = 0

  const add = (connection: BridgeConnection) => {
    byUser.set(connection.user_id, [...(byUser.get(connection.user_id) ?? []), connection])
    total++
  }
  const remove = (connection: BridgeConnection) => {
    const current = byUser.get(connection.user_id)
    if (current === undefined || !current.includes(connection)) return
    const next = current.filter((c) => c !== connection)
    if (next.length === 0) byUser.delete(connection.user_id)
    else byUser.set(connection.user_id, next)
    total--
  }

  const deliver = (event: AgentEvent, encoded?: string) => {
    const connections = byUser.get(event.user_id)
    if (connections === undefined) return
    const frame = encoded ?? JSON.stringify(event)
    for (let i = 0; i < connections.length; i++) connections[i]!.send(frame, event)
  }

  return WebSocketBridge.of({
    register: (connection) => Effect.acquireRelease(Effect.sync(() => add(connection)), () => Effect.sync(() => remove(connection))),
    emit: (event, frame) => Effect.sync(() => deliver(event, frame)),
    deliverSync: deliver,
    connectionCount: (user_id) => Effect.sync(() => user_id === undefined ? total : (byUser.get(user_id)?.length ?? 0))
  })
})

/** The in-memory bridge. No requirements. */
export const layer: Layer.Layer<WebSocketBridge> = Layer.effect(WebSocketBridge, make)
