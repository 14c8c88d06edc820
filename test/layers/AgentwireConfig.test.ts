import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Option, Redacted } from "effect"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"

const read = (env: Record<string, string>) =>
  AgentwireConfig.fromEnv.pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env }))))

describe("AgentwireConfig.fromEnv", () => {
  it.effect("defaults", () =>
    Effect.gen(function*() {
      const settings = yield* read({})
      expect(settings).toMatchObject({ host: "127.0.0.1", port: 8080, maxMessageBytes: 65536, logLevel: "Info", production: false })
      expect(Option.isNone(settings.jwtSecret)).toBe(true)
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

  const bad: ReadonlyArray<[Record<string, string>, string]> = [
    [{ AGENTWIRE_PORT: "abc" }, "AGENTWIRE_PORT"],
    [{ AGENTWIRE_PORT: "70000" }, "AGENTWIRE_PORT"],
    [{ AGENTWIRE_PORT: "-1" }, "AGENTWIRE_PORT"],
    [{ AGENTWIRE_PORT: "80.5" }, "AGENTWIRE_PORT"],
    [{ AGENTWIRE_MAX_MESSAGE_BYTES: "10" }, "AGENTWIRE_MAX_MESSAGE_BYTES"],
    [{ AGENTWIRE_MAX_MESSAGE_BYTES: "lots" }, "AGENTWIRE_MAX_MESSAGE_BYTES"],
    [{ AGENTWIRE_LOG_LEVEL: "loud" }, "AGENTWIRE_LOG_LEVEL"],
    [{ AGENTWIRE_JWT_SECRET: "too-short" }, "AGENTWIRE_JWT_SECRET"]
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
