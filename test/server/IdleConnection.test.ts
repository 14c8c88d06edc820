/**
 * What an idle connection no longer holds, end to end over a real server: its
 * socket's events reach it without per-socket listeners (`ServerSocket`), and
 * its token expiry is one entry of the server's shared expiry queue
 * (`Deadlines`), not a timer of its own.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import { SignJWT } from "jose"
import * as Agentwire from "../../src/Agentwire.ts"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"
import type { AgentwireSettings } from "../../src/services/AgentwireConfig.ts"
import { AgentwireServer } from "../../src/services/AgentwireServer.ts"
import { connect } from "../fixtures/client.ts"
import { registry } from "../fixtures/runtime.ts"
import { makeLogs } from "../fixtures/logs.ts"

const SECRET = "idle-connection-suite-secret-0123456789"


const serverLayer = (settings: Partial<AgentwireSettings>, logs = makeLogs()) =>
  Agentwire.layerServer(registry).pipe(
    Layer.provide(logs.layer),
    Layer.provideMerge(AgentwireConfig.layer({ port: 0, jwtSecret: Option.some(Redacted.make(SECRET)), ...settings }))
  )

const wsUrl = AgentwireServer.useSync((s) => `${s.url.replace(/^http/, "ws")}/ws`)

/** A token of `user` whose JWT `exp` is `exp` (whole seconds since the epoch). */
const tokenUntil = (user: string, exp: number) =>
  Effect.promise(() =>
    new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject(user).setExpirationTime(exp).sign(new TextEncoder().encode(SECRET))
  )

/** A token of `user` that expires `seconds` from now, rounded down to the whole second (for long-lived tokens). */
const tokenFor = (user: string, seconds: number) => tokenUntil(user, Math.floor(Date.now() / 1000) + seconds)

const connectWith = (token: string) =>
  Effect.gen(function*() {
    const client = yield* connect(yield* wsUrl, { headers: { authorization: `Bearer ${token}` } })
    yield* client.next("connection_established")
    return client
  })

describe("an idle connection", () => {
  it.live("tokens expiring at different times close their own connections, in order; a refreshed one stays", () =>
    Effect.gen(function*() {
      // `exp` is whole seconds: `floor(now) + 1` leaves 0 to 1 s, and a token made at x.999 s expired before its
      // connection (or its refresh) was through. All from one base, the next whole second: each 1 s token has
      // 1 to 2 s left, and the later one expires exactly 2 s after them.
      const base = Math.ceil(Date.now() / 1000)
      const later = yield* connectWith(yield* tokenUntil("later", base + 3))
      const sooner = yield* connectWith(yield* tokenUntil("sooner", base + 1))
      const refreshed = yield* connectWith(yield* tokenUntil("refreshed", base + 1))
      refreshed.send({ type: "authenticate", token: yield* tokenUntil("refreshed", base + 60), request_id: "auth-1" })
      yield* refreshed.next("authenticated")
      const expired = (client: typeof later) =>
        Effect.gen(function*() {
          expect(yield* client.next("error")).toMatchObject({ code: "TOKEN_EXPIRED" })
          expect(yield* client.closed).toMatchObject({ code: 4001 })
        })
      yield* expired(sooner)
      // the later token has two seconds more: its connection still answers
      later.send({ type: "ping", request_id: "p-1" })
      yield* later.next("pong")
      expect(later.received.some((m) => m.type === "error")).toBe(false)
      yield* expired(later)
      // past both expiries, the refreshed connection still answers
      refreshed.send({ type: "ping" })
      yield* refreshed.next("pong")
      expect(refreshed.received.some((m) => m.type === "error")).toBe(false)
    }).pipe(Effect.provide(serverLayer({ jwtClockSkewSeconds: 0 })), Effect.scoped), 15_000)

  it.live("a frame over max_message_bytes: close 1009, and the close log names it (the socket's error reached the connection)", () => {
    const logs = makeLogs()
    return Effect.gen(function*() {
      const client = yield* connectWith(yield* tokenFor("big-sender", 300))
      client.sendRaw("x".repeat(2048))
      expect((yield* client.closed).code).toBe(1009)
      const line = yield* logs.line((l) => l.includes("connection closed") && l.includes("user_id=big-sender"))
      expect(line).toContain("reason=message_too_big")
    }).pipe(Effect.provide(serverLayer({ maxMessageBytes: 1024 }, logs)), Effect.scoped)
  })

  it.live("a client's close frame without a code (1005) is logged as the client closing, not as the client gone", () => {
    const logs = makeLogs()
    return Effect.gen(function*() {
      const client = yield* connectWith(yield* tokenFor("plain-closer", 300))
      client.ws.close()
      const line = yield* logs.line((l) => l.includes("connection closed") && l.includes("user_id=plain-closer"))
      expect(line).toContain("code=1005")
      expect(line).toContain("reason=client_closed")
    }).pipe(Effect.provide(serverLayer({}, logs)), Effect.scoped)
  })
})
