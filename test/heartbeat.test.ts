/** Heartbeats: a socket that stops answering pings is dropped; a live one stays. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import * as Agentwire from "../src/Agentwire.ts"
import * as AgentwireConfig from "../src/layers/AgentwireConfig.ts"
import { AgentwireServer } from "../src/services/AgentwireServer.ts"
import { Auth } from "../src/services/Auth.ts"
import { connect } from "./fixtures/client.ts"
import { QuietLogs, registry } from "./fixtures/runtime.ts"

const FastHeartbeat = Agentwire.layerServer(registry).pipe(
  Layer.provide(QuietLogs),
  Layer.provideMerge(AgentwireConfig.layer({
    port: 0,
    // the live socket's pong must be read within one interval of its ping (the client runs in this process, so a
    // loop stalled for an interval, GC or a loaded machine, looked like a dead client at 200 ms): 500 ms
    heartbeatIntervalMs: 500,
    jwtSecret: Option.some(Redacted.make("heartbeat-suite-secret-0123456789abcdef"))
  }))
)

describe("heartbeat", () => {
  // live clock: the heartbeat is real time on a real server; the test waits for the close event
  it.live("a socket that does not answer pings is terminated; one that does stays open", () =>
    Effect.gen(function*() {
      const url = yield* AgentwireServer.useSync((s) => `${s.url.replace(/^http/, "ws")}/ws`)
      const token = yield* Auth.use((auth) => auth.issue("hb-user", 60))
      const headers = { authorization: `Bearer ${token}` }
      const live = yield* connect(url, { headers })
      const silent = yield* connect(url, { headers, autoPong: false })
      yield* silent.next("connection_established")
      expect((yield* silent.closed).code).toBe(1006)
      live.send({ type: "ping" })
      yield* live.next("pong")
      expect(live.ws.readyState).toBe(live.ws.OPEN)
    }).pipe(Effect.provide(FastHeartbeat), Effect.scoped))
})
