import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import { exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from "jose"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"
import * as AuthJwt from "../../src/layers/AuthJwt.ts"
import { Auth, AuthError, AuthErrorReasons, redactTokens } from "../../src/services/Auth.ts"

const SECRET = "0123456789abcdef0123456789abcdef"
const key = new TextEncoder().encode(SECRET)
const auth = AuthJwt.make(Redacted.make(SECRET))
const now = () => Math.floor(Date.now() / 1000)

type SigningKey = Parameters<SignJWT["sign"]>[0]

/** Signs `claims` as given (no defaults: a claim left out is absent). */
const sign = (claims: JWTPayload, signingKey: SigningKey = key, header: { alg: string; kid?: string } = { alg: "HS256" }) =>
  Effect.promise(() => new SignJWT(claims).setProtectedHeader(header).sign(signingKey))

/** Refusal reason of `token`, checking on the way that the message never contains the token. */
const refusal = (verifier: Auth["Service"], token: string) =>
  Effect.gen(function*() {
    const error = yield* Effect.flip(verifier.verify(token))
    expect(error).toBeInstanceOf(AuthError)
    if (token.length > 0) {
      expect(error.message).not.toContain(token)
      for (const part of token.split(".").filter((p) => p.length > 8)) expect(error.message).not.toContain(part)
    }
    return error.reason
  })

describe("AuthJwt HS256", () => {
  it.effect("verifies an HS256 token and returns its sub and exp (epoch ms); issue round-trips with an exp", () =>
    Effect.gen(function*() {
      const exp = now() + 60
      expect(yield* auth.verify(yield* sign({ sub: "alice", exp }))).toEqual({ user_id: "alice", expires_at: exp * 1000 })
      const issued = yield* auth.issue("bob", 60)
      const verified = yield* auth.verify(issued)
      expect(verified.user_id).toBe("bob")
      expect(verified.expires_at).toBeGreaterThan(Date.now() + 50_000)
      expect(verified.expires_at).toBeLessThanOrEqual(Date.now() + 60_000)
    }))

  it.effect("refuses expired, forged, malformed and subject-less tokens with a reason and no token in the message", () =>
    Effect.gen(function*() {
      const exp = now() + 60
      const cases: ReadonlyArray<[string, string]> = [
        [yield* sign({ sub: "alice", exp: now() - 3600 }), "expired"],
        [yield* sign({ sub: "alice", exp }, new TextEncoder().encode("another-secret-another-secret-xx")), "invalid_signature"],
        ["not.a.jwt", "malformed"],
        ["", "malformed"],
        [yield* sign({ exp }), "invalid_subject"],
        [yield* sign({ sub: "undefined", exp }), "invalid_subject"],
        [yield* sign({ sub: "has space", exp }), "invalid_subject"]
      ]
      for (const [token, reason] of cases) expect([token, yield* refusal(auth, token)]).toEqual([token, reason])
    }))

  it.effect("refuses a signed token without exp (missing_exp): tokens must expire", () =>
    Effect.gen(function*() {
      expect(yield* refusal(auth, yield* sign({ sub: "alice" }))).toBe("missing_exp")
      expect(yield* refusal(auth, yield* sign({ sub: "alice", iat: now() }))).toBe("missing_exp")
      // a non-numeric exp is malformed, not a token that never expires
      expect(yield* refusal(auth, yield* sign({ sub: "alice", exp: "tomorrow" as unknown as number }))).toBe("malformed")
      // the signature is checked first: an unsigned claim set says nothing about exp
      expect(yield* refusal(auth, yield* sign({ sub: "alice" }, new TextEncoder().encode("x".repeat(32))))).toBe(
        "invalid_signature"
      )
    }))

  it.effect("a token whose nbf is in the future is not_yet_valid (not 'malformed')", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(auth.verify(yield* sign({ sub: "alice", exp: now() + 3600, nbf: now() + 600 })))
      expect(error.reason).toBe("not_yet_valid")
      expect(error.message).toContain("not valid yet")
      expect(yield* auth.verify(yield* sign({ sub: "alice", exp: now() + 3600, nbf: now() - 5 }))).toMatchObject({ user_id: "alice" })
    }))

  it.effect("tolerates clock skew on exp and nbf (default 30 s, configurable, 0 = none)", () =>
    Effect.gen(function*() {
      const justExpired = yield* sign({ sub: "alice", exp: now() - 10 })
      const almostValid = yield* sign({ sub: "alice", exp: now() + 3600, nbf: now() + 10 })
      expect((yield* auth.verify(justExpired)).user_id).toBe("alice")
      expect((yield* auth.verify(almostValid)).user_id).toBe("alice")
      expect(yield* refusal(auth, yield* sign({ sub: "alice", exp: now() - 40 }))).toBe("expired")
      expect(yield* refusal(auth, yield* sign({ sub: "alice", exp: now() + 3600, nbf: now() + 40 }))).toBe("not_yet_valid")

      const strict = AuthJwt.make(Redacted.make(SECRET), { clockSkewSeconds: 0 })
      expect(yield* refusal(strict, justExpired)).toBe("expired")
      expect(yield* refusal(strict, almostValid)).toBe("not_yet_valid")
      const lenient = AuthJwt.make(Redacted.make(SECRET), { clockSkewSeconds: 120 })
      expect((yield* lenient.verify(yield* sign({ sub: "alice", exp: now() - 100 }))).user_id).toBe("alice")
    }))

  it.effect("checks iss and aud when configured; issue sets them", () =>
    Effect.gen(function*() {
      const strict = AuthJwt.make(Redacted.make(SECRET), { issuer: "https://idp.example.com/", audience: "agentwire" })
      const exp = now() + 60
      const good = { sub: "alice", exp, iss: "https://idp.example.com/", aud: "agentwire" }
      expect((yield* strict.verify(yield* sign(good))).user_id).toBe("alice")
      expect((yield* strict.verify(yield* sign({ ...good, aud: ["other", "agentwire"] }))).user_id).toBe("alice")
      expect(yield* refusal(strict, yield* sign({ ...good, iss: "https://evil.example.com/" }))).toBe("wrong_issuer")
      expect(yield* refusal(strict, yield* sign({ sub: "alice", exp, aud: "agentwire" }))).toBe("wrong_issuer")
      expect(yield* refusal(strict, yield* sign({ ...good, aud: "another-api" }))).toBe("wrong_audience")
      expect(yield* refusal(strict, yield* sign({ ...good, aud: ["x", "y"] }))).toBe("wrong_audience")
      expect(yield* refusal(strict, yield* sign({ sub: "alice", exp, iss: "https://idp.example.com/" }))).toBe("wrong_audience")
      // unconfigured: iss and aud are not looked at
      expect((yield* auth.verify(yield* sign({ ...good, iss: "anyone", aud: "anything" }))).user_id).toBe("alice")
      // tokens issued by the configured service pass its own checks; unconfigured tokens do not
      expect((yield* strict.verify(yield* strict.issue("carol", 60))).user_id).toBe("carol")
      expect(yield* refusal(strict, yield* auth.issue("carol", 60))).toBe("wrong_issuer")
    }))

  it.effect("refuses other algorithms (no alg confusion): HS512, none, and asymmetric ones without a JWKS", () =>
    Effect.gen(function*() {
      const exp = now() + 60
      const hs512 = yield* sign({ sub: "alice", exp }, new TextEncoder().encode(SECRET.repeat(2)), { alg: "HS512" })
      expect(yield* refusal(auth, hs512)).toBe("unsupported_algorithm")
      const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")
      expect(yield* refusal(auth, `${b64({ alg: "none" })}.${b64({ sub: "alice", exp })}.`)).toBe("unsupported_algorithm")
      const { privateKey } = yield* Effect.promise(() => generateKeyPair("RS256"))
      expect(yield* refusal(auth, yield* sign({ sub: "alice", exp }, privateKey, { alg: "RS256" }))).toBe("unsupported_algorithm")
    }))

  it("every reason has its own message, and none of them names a token", () => {
    const messages = AuthErrorReasons.map((reason) => new AuthError({ reason }).message)
    expect(new Set(messages).size).toBe(AuthErrorReasons.length)
    for (const message of messages) expect(message).not.toMatch(/eyJ/)
  })
})

/** A JWKS server on a free loopback port; counts its requests. */
const jwksServer = (answer: () => { status: number; body: string }) =>
  Effect.acquireRelease(
    Effect.callback<{ url: string; requests: () => number; server: Server }>((resume) => {
      let requests = 0
      const server = createServer((_request, response) => {
        requests++
        const { status, body } = answer()
        response.writeHead(status, { "content-type": "application/json" }).end(body)
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as AddressInfo
        resume(Effect.succeed({ url: `http://127.0.0.1:${port}/.well-known/jwks.json`, requests: () => requests, server }))
      })
    }),
    ({ server }) =>
      Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
      })
  )

/** A URL on which nothing listens: a server bound to a free port, then closed. */
const deadUrl = Effect.callback<string>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as AddressInfo
    server.close(() => resume(Effect.succeed(`http://127.0.0.1:${port}/jwks.json`)))
  })
})

const keyPair = (alg: string, kid: string) =>
  Effect.promise(async () => {
    const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
    const jwk: JWK = { ...(await exportJWK(publicKey)), kid, alg, use: "sig" }
    return { privateKey, jwk, alg, kid }
  })

describe("AuthJwt with a JWKS (asymmetric tokens)", () => {
  it.live("verifies RS256, ES256, PS256 and EdDSA tokens against the JWKS; HS256 still uses the secret; the JWKS is cached", () =>
    Effect.gen(function*() {
      const pairs = [
        yield* keyPair("RS256", "rsa-1"),
        yield* keyPair("ES256", "ec-1"),
        yield* keyPair("PS256", "ps-1"),
        yield* keyPair("EdDSA", "ed-1")
      ]
      const jwks = yield* jwksServer(() => ({ status: 200, body: JSON.stringify({ keys: pairs.map((p) => p.jwk) }) }))
      const verifier = AuthJwt.make(Redacted.make(SECRET), { jwksUrl: jwks.url, issuer: "https://idp.test/", audience: "agentwire" })
      const exp = now() + 300
      for (const pair of pairs) {
        const token = yield* sign({ sub: `user-${pair.kid}`, exp, iss: "https://idp.test/", aud: "agentwire" }, pair.privateKey, {
          alg: pair.alg,
          kid: pair.kid
        })
        expect(yield* verifier.verify(token)).toEqual({ user_id: `user-${pair.kid}`, expires_at: exp * 1000 })
      }
      expect(jwks.requests()).toBe(1)
      expect((yield* verifier.verify(yield* verifier.issue("dave", 60))).user_id).toBe("dave")
      // the policy applies to JWKS tokens too
      const rsa = pairs[0]!
      const noExp = yield* sign({ sub: "alice", iss: "https://idp.test/", aud: "agentwire" }, rsa.privateKey, { alg: "RS256", kid: "rsa-1" })
      expect(yield* refusal(verifier, noExp)).toBe("missing_exp")
      const wrongAud = yield* sign({ sub: "alice", exp, iss: "https://idp.test/", aud: "x" }, rsa.privateKey, { alg: "RS256", kid: "rsa-1" })
      expect(yield* refusal(verifier, wrongAud)).toBe("wrong_audience")
    }))

  it.live("a token signed by a key that is not in the JWKS is unknown_key; a forged one with a known kid is invalid_signature", () =>
    Effect.gen(function*() {
      const known = yield* keyPair("RS256", "known")
      const stranger = yield* keyPair("RS256", "stranger")
      const jwks = yield* jwksServer(() => ({ status: 200, body: JSON.stringify({ keys: [known.jwk] }) }))
      const verifier = AuthJwt.make(Redacted.make(SECRET), { jwksUrl: jwks.url })
      const claims = { sub: "alice", exp: now() + 300 }
      expect((yield* verifier.verify(yield* sign(claims, known.privateKey, { alg: "RS256", kid: "known" }))).user_id).toBe("alice")
      expect(yield* refusal(verifier, yield* sign(claims, stranger.privateKey, { alg: "RS256", kid: "stranger" }))).toBe("unknown_key")
      expect(yield* refusal(verifier, yield* sign(claims, stranger.privateKey, { alg: "RS256", kid: "known" }))).toBe(
        "invalid_signature"
      )
      // an ES256 token where the JWKS only has RSA keys: no key for it
      const ec = yield* keyPair("ES256", "known")
      expect(yield* refusal(verifier, yield* sign(claims, ec.privateKey, { alg: "ES256", kid: "known" }))).toBe("unknown_key")
    }))

  it.live("a JWKS that cannot be fetched (server down, error status, not a JWKS) gives jwks_unavailable, without the token", () =>
    Effect.gen(function*() {
      const pair = yield* keyPair("ES256", "ec-1")
      const token = yield* sign({ sub: "alice", exp: now() + 300 }, pair.privateKey, { alg: "ES256", kid: "ec-1" })
      const down = AuthJwt.make(Redacted.make(SECRET), { jwksUrl: yield* deadUrl })
      const error = yield* Effect.flip(down.verify(token))
      expect(error.reason).toBe("jwks_unavailable")
      expect(error.message).toContain("JWKS")
      expect(error.message).not.toContain(token)
      // HS256 tokens do not depend on the JWKS
      expect((yield* down.verify(yield* down.issue("bob", 60))).user_id).toBe("bob")

      const failing = yield* jwksServer(() => ({ status: 500, body: "{}" }))
      expect(yield* refusal(AuthJwt.make(Redacted.make(SECRET), { jwksUrl: failing.url }), token)).toBe("jwks_unavailable")
      const garbage = yield* jwksServer(() => ({ status: 200, body: "<html>" }))
      expect(yield* refusal(AuthJwt.make(Redacted.make(SECRET), { jwksUrl: garbage.url }), token)).toBe("jwks_unavailable")
      const notJwks = yield* jwksServer(() => ({ status: 200, body: JSON.stringify({ nothing: true }) }))
      expect(yield* refusal(AuthJwt.make(Redacted.make(SECRET), { jwksUrl: notJwks.url }), token)).toBe("jwks_unavailable")
    }))
})

describe("AuthJwt.layer", () => {
  const build = (settings: Parameters<typeof AgentwireConfig.layer>[0]) =>
    Effect.provide(Auth.useSync((a) => a), AuthJwt.layer.pipe(Layer.provide(AgentwireConfig.layer(settings))))

  it.effect("generates a secret outside production and refuses to start without one in production", () =>
    Effect.gen(function*() {
      const dev = yield* build({})
      expect((yield* dev.verify(yield* dev.issue("carol", 60))).user_id).toBe("carol")
      const error = yield* Effect.flip(build({ production: true, jwtSecret: Option.none() }))
      expect(error._tag).toBe("MissingSecretError")
      expect(error.message).toContain("AGENTWIRE_JWT_SECRET")
    }))

  it.effect("in production a JWKS URL stands in for the secret; the settings' policy is applied", () =>
    Effect.gen(function*() {
      const prod = yield* build({ production: true, jwtSecret: Option.none(), jwtJwksUrl: Option.some("https://idp.example.com/jwks") })
      // only tokens the process issues itself pass as HS256
      expect((yield* prod.verify(yield* prod.issue("erin", 60))).user_id).toBe("erin")
      expect(yield* refusal(prod, yield* sign({ sub: "erin", exp: now() + 60 }))).toBe("invalid_signature")

      const configured = yield* build({
        jwtSecret: Option.some(Redacted.make(SECRET)),
        jwtIssuer: Option.some("me"),
        jwtAudience: Option.some("you"),
        jwtClockSkewSeconds: 0
      })
      expect(yield* refusal(configured, yield* sign({ sub: "a", exp: now() + 60 }))).toBe("wrong_issuer")
      expect(yield* refusal(configured, yield* sign({ sub: "a", exp: now() - 1, iss: "me", aud: "you" }))).toBe("expired")
      expect((yield* configured.verify(yield* sign({ sub: "a", exp: now() + 60, iss: "me", aud: "you" }))).user_id).toBe("a")
    }))
})

describe("redactTokens", () => {
  it("removes JWTs, token query values, bearer values and jwt. subprotocols from crash output", () => {
    const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    const text = `TypeError: Invalid URL\n  input: 'http://[?token=${jwt}'\n  authorization: Bearer abc.def\n  protocol: jwt.${jwt}, agentwire.v1\n  ?token=opaque-123&x=1`
    const out = redactTokens(text)
    expect(out).not.toContain(jwt)
    expect(out).not.toContain("abc.def")
    expect(out).not.toContain("opaque-123")
    expect(out).toContain("x=1")
    expect(out).toContain("agentwire.v1")
  })
})
