/**
 * AgentwireServer: the HTTP + WebSocket front door, once it is listening.
 *
 * Implemented by `server/Server.ts`. Routes: `GET /ws` (WebSocket, protocol v1),
 * `GET /health`, `GET /ready`, `POST /api/runs`.
 *
 * @module
 */
import { Context, Data } from "effect"

/** The server could not start listening. */
export class ServerStartError extends Data.TaggedError("ServerStartError")<{
  readonly reason: "AddressInUse" | "PermissionDenied" | "AddressNotAvailable" | "Unknown"
  readonly host: string
  readonly port: number
  readonly detail: string
}> {
  override get message(): string {
    const where = `${this.host}:${this.port}`
    switch (this.reason) {
      case "AddressInUse":
        return `port ${this.port} on ${this.host} is already in use (set AGENTWIRE_PORT to another port)`
      case "PermissionDenied":
        return `no permission to listen on ${where} (AGENTWIRE_HOST / AGENTWIRE_PORT)`
      case "AddressNotAvailable":
        return `cannot listen on ${where}: the address is not available on this machine (AGENTWIRE_HOST)`
      case "Unknown":
        return `cannot listen on ${where}: ${this.detail}`
    }
  }
}

export class AgentwireServer extends Context.Service<AgentwireServer, {
  readonly host: string
  /** The port actually bound (useful when configured as 0). */
  readonly port: number
  /** `http://host:port` */
  readonly url: string
}>()("agentwire/AgentwireServer") {}
