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

  it.effect("language model: off by default; coalescing defaults to 20 ms", () =>
    Effect.gen(function*() {
      const settings = yield* read({})
      expect(Option.isNone(settings.llm)).toBe(true)
      expect(settings.streamCoalesceMs).toBe(20)
    }))

  it.effect("language model: base URL and model together, optional key, timeout and steps", () =>
    Effect.gen(function*() {
      const plain = yield* read({ AGENTWIRE_LLM_BASE_URL: "http://127.0.0.1:11434/v1/", AGENTWIRE_LLM_MODEL: "llama3.2" })
      expect(Option.getOrThrow(plain.llm)).toMatchObject({ baseUrl: "http://127.0.0.1:11434/v1", model: "llama3.2", timeoutMs: 60_000, maxSteps: 8 })
      expect(Option.isNone(Option.getOrThrow(plain.llm).apiKey)).toBe(true)
      const full = yield* read({
        AGENTWIRE_LLM_BASE_URL: "https://api.openai.com/v1",
        AGENTWIRE_LLM_MODEL: "gpt-4o-mini",
        AGENTWIRE_LLM_API_KEY: "sk-abc",
        AGENTWIRE_LLM_TIMEOUT_MS: "1500",
        AGENTWIRE_LLM_MAX_STEPS: "3",
        AGENTWIRE_STREAM_COALESCE_MS: "0"
      })
      const llm = Option.getOrThrow(full.llm)
      expect(llm).toMatchObject({ timeoutMs: 1500, maxSteps: 3 })
      expect(llm.apiKey.pipe(Option.map(Redacted.value))).toEqual(Option.some("sk-abc"))
      expect(full.streamCoalesceMs).toBe(0)
    }))

  const badLlm: ReadonlyArray<[Record<string, string>, string]> = [
    [{ AGENTWIRE_LLM_BASE_URL: "http://x/v1" }, "AGENTWIRE_LLM_MODEL"],
    [{ AGENTWIRE_LLM_MODEL: "m" }, "AGENTWIRE_LLM_BASE_URL"],
    [{ AGENTWIRE_LLM_API_KEY: "sk-1" }, "AGENTWIRE_LLM_BASE_URL"],
    [{ AGENTWIRE_LLM_BASE_URL: "localhost:11434", AGENTWIRE_LLM_MODEL: "m" }, "AGENTWIRE_LLM_BASE_URL"],
    [{ AGENTWIRE_LLM_BASE_URL: "ftp://host/v1", AGENTWIRE_LLM_MODEL: "m" }, "AGENTWIRE_LLM_BASE_URL"],
    [{ AGENTWIRE_LLM_BASE_URL: "http://host/v1?x=1", AGENTWIRE_LLM_MODEL: "m" }, "AGENTWIRE_LLM_BASE_URL"],
    [{ AGENTWIRE_LLM_TIMEOUT_MS: "0" }, "AGENTWIRE_LLM_TIMEOUT_MS"],
    [{ AGENTWIRE_LLM_TIMEOUT_MS: "soon" }, "AGENTWIRE_LLM_TIMEOUT_MS"],
    [{ AGENTWIRE_LLM_MAX_STEPS: "0" }, "AGENTWIRE_LLM_MAX_STEPS"],
    [{ AGENTWIRE_LLM_MAX_STEPS: "1000" }, "AGENTWIRE_LLM_MAX_STEPS"],
    [{ AGENTWIRE_STREAM_COALESCE_MS: "-1" }, "AGENTWIRE_STREAM_COALESCE_MS"],
    [{ AGENTWIRE_STREAM_COALESCE_MS: "fast" }, "AGENTWIRE_STREAM_COALESCE_MS"]
  ]
  for (const [env, variable] of badLlm) {
    it.effect(`${JSON.stringify(env)} fails naming ${variable}`, () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(read(env))
        expect(error._tag).toBe("ConfigInvalidError")
        expect(error.variable).toBe(variable)
        expect(error.message.startsWith(variable)).toBe(true)
      }))
  }

  it.effect("a base URL with credentials is refused without echoing it", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(read({ AGENTWIRE_LLM_BASE_URL: "https://user:hunter2@host/v1", AGENTWIRE_LLM_MODEL: "m" }))
      expect(error.variable).toBe("AGENTWIRE_LLM_BASE_URL")
      expect(error.message).not.toContain("hunter2")
    }))
})

describe("AGENTWIRE_REDIS_URL", () => {
  it.effect("absent by default; a redis:// or rediss:// URL is kept redacted; the outage buffer has a default", () =>
    Effect.gen(function*() {
      const none = yield* read({})
      expect(Option.isNone(none.redisUrl)).toBe(true)
      expect(none.redisBufferEvents).toBe(10_000)
      const set = yield* read({ AGENTWIRE_REDIS_URL: " redis://:pw@10.0.0.5:6380/2 ", AGENTWIRE_REDIS_BUFFER_EVENTS: "50" })
      expect(set.redisUrl.pipe(Option.map(Redacted.value))).toEqual(Option.some("redis://:pw@10.0.0.5:6380/2"))
      expect(String(Option.getOrThrow(set.redisUrl))).not.toContain("pw")
      expect(set.redisBufferEvents).toBe(50)
      const tls = yield* read({ AGENTWIRE_REDIS_URL: "rediss://user:pw@redis.example.com" })
      expect(Option.isSome(tls.redisUrl)).toBe(true)
    }))

  it.effect("AGENTWIRE_INSTANCE_LEASE_MS: 10000 by default, 300 to 3600000, else a ConfigInvalidError naming it", () =>
    Effect.gen(function*() {
      expect((yield* read({})).instanceLeaseMs).toBe(10_000)
      expect((yield* read({ AGENTWIRE_INSTANCE_LEASE_MS: "1500" })).instanceLeaseMs).toBe(1500)
      for (const bad of ["299", "0", "-1", "3600001", "ten", "1.5"]) {
        const error = yield* Effect.flip(read({ AGENTWIRE_INSTANCE_LEASE_MS: bad }))
        expect(error.variable).toBe("AGENTWIRE_INSTANCE_LEASE_MS")
        expect(error.message).toMatch(/^AGENTWIRE_INSTANCE_LEASE_MS must be an integer from 300 to 3600000/)
      }
    }))

  for (const bad of ["localhost:6379", "http://host:6379", "redis://", "redis://:hunter2@host:6379/x", "not a url hunter2"]) {
    it.effect(`${JSON.stringify(bad.replace("hunter2", "…"))} is a ConfigInvalidError naming the variable, never echoing a password`, () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(read({ AGENTWIRE_REDIS_URL: bad }))
        expect(error._tag).toBe("ConfigInvalidError")
        expect(error.variable).toBe("AGENTWIRE_REDIS_URL")
        expect(error.message.startsWith("AGENTWIRE_REDIS_URL")).toBe(true)
        expect(error.message).not.toContain("hunter2")
      }))
  }

  it.effect("a port out of range (or not a number) is named as such, never echoing the password; empty counts as unset", () =>
    Effect.gen(function*() {
      for (const [bad, port] of [["redis://:hunter2@127.0.0.1:99999", "99999"], ["redis://:hunter2@127.0.0.1:0", "0"], ["rediss://u:hunter2@host:63x79/1", "63x79"]] as const) {
        const error = yield* Effect.flip(read({ AGENTWIRE_REDIS_URL: bad }))
        expect(error.message).toBe(`AGENTWIRE_REDIS_URL must be a redis:// or rediss:// URL whose port is from 1 to 65535 (its port is "${port}")`)
        expect(error.message).not.toContain("hunter2")
      }
      expect((yield* read({ AGENTWIRE_REDIS_URL: "redis://:pw@127.0.0.1:65535" })).redisUrl.pipe(Option.isSome)).toBe(true)
      expect(Option.isNone((yield* read({ AGENTWIRE_REDIS_URL: "" })).redisUrl)).toBe(true)
      expect(Option.isNone((yield* read({ AGENTWIRE_REDIS_URL: "  " })).redisUrl)).toBe(true)
    }))

  it.effect("AGENTWIRE_REDIS_BUFFER_EVENTS must be an integer", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(read({ AGENTWIRE_REDIS_BUFFER_EVENTS: "lots" }))
      expect(error.variable).toBe("AGENTWIRE_REDIS_BUFFER_EVENTS")
    }))
})
