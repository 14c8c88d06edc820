import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Option, Redacted } from "effect"
import fc from "fast-check"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"

const read = (env: Record<string, string>) =>
  AgentwireConfig.fromEnv.pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env }))))

describe("AgentwireConfig.fromEnv", () => {
  it.effect("defaults", () =>
    Effect.gen(function*() {
      const settings = yield* read({})
      expect(settings).toMatchObject({ host: "127.0.0.1", port: 8080, maxMessageBytes: 65536, logLevel: "Info", production: false })
      expect(Option.isNone(settings.jwtSecret)).toBe(true)
      expect(settings).toMatchObject({
        jwtIssuer: Option.none(),
        jwtAudience: Option.none(),
        jwtClockSkewSeconds: 30,
        jwtJwksUrl: Option.none(),
        allowedOrigins: Option.none()
      })
    }))

  it.effect("reads the auth policy and the allowed origins (normalised, deduplicated)", () =>
    Effect.gen(function*() {
      const settings = yield* read({
        AGENTWIRE_JWT_ISSUER: " https://idp.example.com/ ",
        AGENTWIRE_JWT_AUDIENCE: "agentwire",
        AGENTWIRE_JWT_CLOCK_SKEW_S: "0",
        AGENTWIRE_JWT_JWKS_URL: "https://idp.example.com/.well-known/jwks.json",
        AGENTWIRE_ALLOWED_ORIGINS: "https://app.example.com, HTTP://LOCALHOST:5173,https://app.example.com:443,"
      })
      expect(settings).toMatchObject({
        jwtIssuer: Option.some("https://idp.example.com/"),
        jwtAudience: Option.some("agentwire"),
        jwtClockSkewSeconds: 0,
        jwtJwksUrl: Option.some("https://idp.example.com/.well-known/jwks.json"),
        allowedOrigins: Option.some(["https://app.example.com", "http://localhost:5173"])
      })
    }))

  it.effect("reads every variable", () =>
    Effect.gen(function*() {
      const secret = "s".repeat(40)
      const settings = yield* read({
        AGENTWIRE_HOST: "0.0.0.0",
        AGENTWIRE_PORT: "0",
        AGENTWIRE_JWT_SECRET: secret,
        AGENTWIRE_MAX_MESSAGE_BYTES: "1024",
        AGENTWIRE_LOG_LEVEL: "WARN",
        NODE_ENV: "production"
      })
      expect(settings).toMatchObject({ host: "0.0.0.0", port: 0, maxMessageBytes: 1024, logLevel: "Warn", production: true })
      expect(settings.jwtSecret.pipe(Option.map(Redacted.value))).toEqual(Option.some(secret))
    }))

  it("AGENTWIRE_ALLOWED_ORIGINS: any list of origins, in any spelling, reads back normalised and deduplicated", async () => {
    const origin = fc.record({
      scheme: fc.constantFrom("http", "https", "HTTPS"),
      host: fc.domain(),
      upper: fc.boolean(),
      port: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined })
    })
    await fc.assert(fc.asyncProperty(fc.array(origin, { minLength: 1, maxLength: 6 }), async (origins) => {
      const spelled = origins.map(({ host, port, scheme, upper }) =>
        `${scheme}://${upper ? host.toUpperCase() : host}${port === undefined ? "" : `:${port}`}`
      )
      const expected = [
        ...new Set(origins.map(({ host, port, scheme }) => {
          const s = scheme.toLowerCase()
          const isDefault = port === (s === "http" ? 80 : 443)
          return `${s}://${host}${port === undefined || isDefault ? "" : `:${port}`}`
        }))
      ]
      const settings = await Effect.runPromise(read({ AGENTWIRE_ALLOWED_ORIGINS: spelled.join(" , ") }))
      expect(settings.allowedOrigins).toEqual(Option.some(expected))
    }))
  })

  const bad: ReadonlyArray<[Record<string, string>, string]> = [
    [{ AGENTWIRE_PORT: "abc" }, "AGENTWIRE_PORT"],
    [{ AGENTWIRE_PORT: "70000" }, "AGENTWIRE_PORT"],
    [{ AGENTWIRE_PORT: "-1" }, "AGENTWIRE_PORT"],
    [{ AGENTWIRE_PORT: "80.5" }, "AGENTWIRE_PORT"],
    [{ AGENTWIRE_MAX_MESSAGE_BYTES: "10" }, "AGENTWIRE_MAX_MESSAGE_BYTES"],
    [{ AGENTWIRE_MAX_MESSAGE_BYTES: "lots" }, "AGENTWIRE_MAX_MESSAGE_BYTES"],
    [{ AGENTWIRE_LOG_LEVEL: "loud" }, "AGENTWIRE_LOG_LEVEL"],
    [{ AGENTWIRE_JWT_SECRET: "too-short" }, "AGENTWIRE_JWT_SECRET"],
    [{ AGENTWIRE_JWT_CLOCK_SKEW_S: "301" }, "AGENTWIRE_JWT_CLOCK_SKEW_S"],
    [{ AGENTWIRE_JWT_CLOCK_SKEW_S: "-5" }, "AGENTWIRE_JWT_CLOCK_SKEW_S"],
    [{ AGENTWIRE_JWT_CLOCK_SKEW_S: "30s" }, "AGENTWIRE_JWT_CLOCK_SKEW_S"],
    [{ AGENTWIRE_JWT_JWKS_URL: "idp.example.com/jwks" }, "AGENTWIRE_JWT_JWKS_URL"],
    [{ AGENTWIRE_JWT_JWKS_URL: "ftp://idp.example.com/jwks" }, "AGENTWIRE_JWT_JWKS_URL"],
    [{ AGENTWIRE_JWT_JWKS_URL: "file:///etc/jwks.json" }, "AGENTWIRE_JWT_JWKS_URL"],
    [{ AGENTWIRE_ALLOWED_ORIGINS: "*" }, "AGENTWIRE_ALLOWED_ORIGINS"],
    [{ AGENTWIRE_ALLOWED_ORIGINS: "https://app.example.com/" }, "AGENTWIRE_ALLOWED_ORIGINS"],
    [{ AGENTWIRE_ALLOWED_ORIGINS: "https://app.example.com/path" }, "AGENTWIRE_ALLOWED_ORIGINS"],
    [{ AGENTWIRE_ALLOWED_ORIGINS: "app.example.com" }, "AGENTWIRE_ALLOWED_ORIGINS"],
    [{ AGENTWIRE_ALLOWED_ORIGINS: "https://ok.example.com,https://*.example.com" }, "AGENTWIRE_ALLOWED_ORIGINS"],
    [{ AGENTWIRE_ALLOWED_ORIGINS: "null" }, "AGENTWIRE_ALLOWED_ORIGINS"],
    [{ AGENTWIRE_ALLOWED_ORIGINS: " , " }, "AGENTWIRE_ALLOWED_ORIGINS"]
  ]
  for (const [env, variable] of bad) {
    it.effect(`${JSON.stringify(env)} fails naming ${variable}`, () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(read(env))
        expect(error._tag).toBe("ConfigInvalidError")
        expect(error.variable).toBe(variable)
        expect(error.message.startsWith(variable)).toBe(true)
      }))
  }

  it.effect("never prints the secret in its error", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(read({ AGENTWIRE_JWT_SECRET: "hunter2-secret" }))
      expect(error.message).not.toContain("hunter2")
    }))
})
