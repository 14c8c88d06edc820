/**
 * The live connections of one process, per user: what every bridge keeps
 * locally. Kept in copy-on-write arrays: registering is rare, delivering is
 * the hot path, so `deliver` loops over a plain array and hands each
 * connection the frame encoded once.
 *
 * @module
 */
import type { AgentEvent } from "../protocol/Protocol.ts"
import type { BridgeConnection } from "../services/WebSocketBridge.ts"

export interface ConnectionRegistry {
  readonly add: (connection: BridgeConnection) => void
  readonly remove: (connection: BridgeConnection) => void
  /** Sends `frame` (the encoding of `event`) to every local connection of `event.user_id`, in registration order. */
  readonly deliver: (event: AgentEvent, frame: string) => void
  /** True when `user_id` has a local connection. */
  readonly has: (user_id: string) => boolean
  /** Local connections of one user, or of everyone. */
  readonly count: (user_id?: string) => number
}

/** An empty registry. */
export const make = (): ConnectionRegistry => {
  const byUser = new Map<string, ReadonlyArray<BridgeConnection>>()
  let total = 0
  return {
    add: (connection) => {
      const current = byUser.get(connection.user_id)
      // concat: an exact-size array (a spread-built one reserves spare slots: 36 B per idle connection measured)
      byUser.set(connection.user_id, current === undefined ? [connection] : current.concat(connection))
      total++
    },
    remove: (connection) => {
      const current = byUser.get(connection.user_id)
      // one registration ends: a connection added twice stays until its second removal (counts stay exact)
      const at = current === undefined ? -1 : current.lastIndexOf(connection)
      if (current === undefined || at < 0) return
      const next = [...current.slice(0, at), ...current.slice(at + 1)]
      if (next.length === 0) byUser.delete(connection.user_id)
      else byUser.set(connection.user_id, next)
      total--
    },
    deliver: (event, frame) => {
      const connections = byUser.get(event.user_id)
      if (connections === undefined) return
      for (let i = 0; i < connections.length; i++) connections[i]!.send(frame, event)
    },
    has: (user_id) => byUser.has(user_id),
    count: (user_id) => (user_id === undefined ? total : (byUser.get(user_id)?.length ?? 0))
  }
}
