import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import { SignJWT } from "jose"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"
import * as AuthJwt from "../../src/layers/AuthJwt.ts"
import { Auth } from "../../src/services/Auth.ts"

const SECRET = "0123456789abcdef0123456789abcdef"
const key = new TextEncoder().encode(SECRET)
const auth = AuthJwt.make(Redacted.make(SECRET))

const sign = (claims: { sub?: string; exp?: number }, secret = key, alg = "HS256") => {
  let jwt = new SignJWT({}).setProtectedHeader({ alg }).setIssuedAt()
  if (claims.sub !== undefined) jwt = jwt.setSubject(claims.sub)
  if (claims.exp !== undefined) jwt = jwt.setExpirationTime(claims.exp)
  return Effect.promise(() => jwt.sign(secret))
}

describe("AuthJwt", () => {
  it.effect("verifies an HS256 token and returns its sub; issue round-trips", () =>
    Effect.gen(function*() {
      expect(yield* auth.verify(yield* sign({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 60 }))).toBe("alice")
      expect(yield* auth.verify(yield* auth.issue("bob", 60))).toBe("bob")
    }))

  it.effect("refuses expired, forged, malformed and subject-less tokens with a reason and no token in the message", () =>
    Effect.gen(function*() {
      const expired = yield* sign({ sub: "alice", exp: Math.floor(Date.now() / 1000) - 10 })
      const forged = yield* sign({ sub: "alice" }, new TextEncoder().encode("another-secret-another-secret-xx"))
      const noSub = yield* sign({})
      const placeholderSub = yield* sign({ sub: "undefined" })
      const cases: ReadonlyArray<[string, string]> = [
        [expired, "expired"],
        [forged, "invalid_signature"],
        ["not.a.jwt", "malformed"],
        ["", "malformed"],
        [noSub, "invalid_subject"],
        [placeholderSub, "invalid_subject"]
      ]
      for (const [token, reason] of cases) {
        const error = yield* Effect.flip(auth.verify(token))
        expect(error.reason).toBe(reason)
        if (token.length > 0) expect(error.message).not.toContain(token)
      }
    }))

  it.effect("refuses tokens signed with another algorithm (no alg confusion)", () =>
    Effect.gen(function*() {
      const hs512 = yield* sign({ sub: "alice" }, new TextEncoder().encode(SECRET.repeat(2)), "HS512")
      expect((yield* Effect.flip(auth.verify(hs512)))._tag).toBe("AuthError")
      const unsigned = `${Buffer.from(`{"alg":"none"}`).toString("base64url")}.${Buffer.from(`{"sub":"alice"}`).toString("base64url")}.`
      expect((yield* Effect.flip(auth.verify(unsigned)))._tag).toBe("AuthError")
    }))

  it.effect("the layer generates a secret outside production and refuses to start without one in production", () =>
    Effect.gen(function*() {
      const dev = yield* Effect.provide(Auth.useSync((a) => a), AuthJwt.layer.pipe(Layer.provide(AgentwireConfig.layer({}))))
      expect(yield* dev.verify(yield* dev.issue("carol", 60))).toBe("carol")
      const error = yield* Effect.flip(
        Effect.provide(Auth.useSync((a) => a), AuthJwt.layer.pipe(Layer.provide(AgentwireConfig.layer({ production: true, jwtSecret: Option.none() }))))
      )
      expect(error._tag).toBe("MissingSecretError")
      expect(error.message).toContain("AGENTWIRE_JWT_SECRET")
    }))
})
