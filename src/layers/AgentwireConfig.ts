/**
 * Reads `AgentwireConfig` from environment variables.
 *
 * | variable | default | meaning |
 * |---|---|---|
 * | `AGENTWIRE_HOST` | `127.0.0.1` | interface to listen on |
 * | `AGENTWIRE_PORT` | `8080` | port (0 = any free port) |
 * | `AGENTWIRE_JWT_SECRET` | none | HS256 secret, at least 32 characters |
 * | `AGENTWIRE_MAX_MESSAGE_BYTES` | `65536` | largest client frame |
 * | `AGENTWIRE_LOG_LEVEL` | `info` | trace, debug, info, warn, error, fatal, none |
 * | `AGENTWIRE_HEARTBEAT_MS` | `30000` | ping interval; a socket silent for one interval is dropped (0 = off) |
 * | `NODE_ENV` | none | `production` makes a missing secret a startup failure |
 * | `AGENTWIRE_LLM_BASE_URL` | none | OpenAI-compatible API base URL (with `AGENTWIRE_LLM_MODEL`); enables `assistant` |
 * | `AGENTWIRE_LLM_MODEL` | none | model name (with `AGENTWIRE_LLM_BASE_URL`) |
 * | `AGENTWIRE_LLM_API_KEY` | none | bearer key; optional (local servers need none); never logged |
 * | `AGENTWIRE_LLM_TIMEOUT_MS` | `60000` | no byte from the model for this long = `LLM_TIMEOUT` |
 * | `AGENTWIRE_LLM_MAX_STEPS` | `8` | model turns per run before `LLM_MAX_STEPS` |
 * | `AGENTWIRE_STREAM_COALESCE_MS` | `20` | at most one `partial_result` per message this often (0 = every chunk) |
 *
 * Values come from the current `ConfigProvider` (the process environment by
 * default), so tests can swap it. Every bad value is a `ConfigInvalidError`
 * whose message names the variable.
 *
 * @module
 */
import { Config, Effect, Layer, type LogLevel, Option, Redacted } from "effect"
import { AgentwireConfig, type AgentwireSettings, ConfigInvalidError, type LlmSettings } from "../services/AgentwireConfig.ts"

const LOG_LEVELS: Record<string, LogLevel.LogLevel> = {
  all: "All",
  trace: "Trace",
  debug: "Debug",
  info: "Info",
  warn: "Warn",
  warning: "Warn",
  error: "Error",
  fatal: "Fatal",
  none: "None"
}

/** Shortest accepted `AGENTWIRE_JWT_SECRET` (HS256 wants at least 256 bits). */
export const MIN_SECRET_LENGTH = 32

const raw = (variable: string) =>
  Config.String(variable).pipe(
    Config.option,
    Effect.map(Option.filter((value) => value.trim().length > 0)),
    // a provider that cannot be read at all is reported with the variable's name too
    Effect.mapError((error) => new ConfigInvalidError({ variable, expected: `readable (${error.message})` }))
  )

const integer = (variable: string, fallback: number, min: number, max: number) =>
  Effect.flatMap(raw(variable), (value) => {
    if (Option.isNone(value)) return Effect.succeed(fallback)
    const n = Number(value.value.trim())
    return /^\d+$/.test(value.value.trim()) && n >= min && n <= max
      ? Effect.succeed(n)
      : Effect.fail(new ConfigInvalidError({ variable, value: value.value, expected: `an integer from ${min} to ${max}` }))
  })

// --- language model settings ---

/** Default of `AGENTWIRE_LLM_TIMEOUT_MS`. */
export const DEFAULT_LLM_TIMEOUT_MS = 60_000
/** Default of `AGENTWIRE_LLM_MAX_STEPS`. */
export const DEFAULT_LLM_MAX_STEPS = 8
/** Default of `AGENTWIRE_STREAM_COALESCE_MS`. */
export const DEFAULT_STREAM_COALESCE_MS = 20

const baseUrl = (variable: string, text: string): Effect.Effect<string, ConfigInvalidError> => {
  const trimmed = text.trim()
  // a URL with credentials is refused without echoing it: the key belongs in AGENTWIRE_LLM_API_KEY
  const echo = trimmed.includes("@") ? undefined : trimmed
  let url: URL
  try {
    url = new URL(trimmed)
  } catch {
    return Effect.fail(new ConfigInvalidError({ variable, value: echo, expected: "an http:// or https:// URL" }))
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return Effect.fail(new ConfigInvalidError({ variable, value: echo, expected: "an http:// or https:// URL" }))
  }
  if (url.username !== "" || url.password !== "") {
    return Effect.fail(new ConfigInvalidError({ variable, expected: "a URL without credentials (put the key in AGENTWIRE_LLM_API_KEY)" }))
  }
  if (url.search !== "" || url.hash !== "") {
    return Effect.fail(new ConfigInvalidError({ variable, value: echo, expected: "a base URL without query or fragment" }))
  }
  return Effect.succeed(trimmed.replace(/\/+$/, ""))
}

/** Reads the language model settings: none when neither base URL nor model is set. */
export const llmFromEnv: Effect.Effect<Option.Option<LlmSettings>, ConfigInvalidError> = Effect.gen(function*() {
  const url = yield* raw("AGENTWIRE_LLM_BASE_URL")
  const model = yield* raw("AGENTWIRE_LLM_MODEL")
  const apiKey = yield* raw("AGENTWIRE_LLM_API_KEY")
  const timeoutMs = yield* integer("AGENTWIRE_LLM_TIMEOUT_MS", DEFAULT_LLM_TIMEOUT_MS, 1, 3_600_000)
  const maxSteps = yield* integer("AGENTWIRE_LLM_MAX_STEPS", DEFAULT_LLM_MAX_STEPS, 1, 100)
  if (Option.isNone(url) && Option.isNone(model)) {
    if (Option.isSome(apiKey)) {
      return yield* new ConfigInvalidError({ variable: "AGENTWIRE_LLM_BASE_URL", expected: "set (with AGENTWIRE_LLM_MODEL) when AGENTWIRE_LLM_API_KEY is" })
    }
    return Option.none()
  }
  if (Option.isNone(url)) {
    return yield* new ConfigInvalidError({ variable: "AGENTWIRE_LLM_BASE_URL", expected: "set when AGENTWIRE_LLM_MODEL is (they go together)" })
  }
  if (Option.isNone(model)) {
    return yield* new ConfigInvalidError({ variable: "AGENTWIRE_LLM_MODEL", expected: "set when AGENTWIRE_LLM_BASE_URL is (they go together)" })
  }
  if (model.value.trim().length > 256) {
    return yield* new ConfigInvalidError({ variable: "AGENTWIRE_LLM_MODEL", value: model.value, expected: "at most 256 characters" })
  }
  if (Option.isSome(apiKey) && /[\r\n]/.test(apiKey.value)) {
    return yield* new ConfigInvalidError({ variable: "AGENTWIRE_LLM_API_KEY", expected: "a single line" })
  }
  return Option.some({
    baseUrl: yield* baseUrl("AGENTWIRE_LLM_BASE_URL", url.value),
    model: model.value.trim(),
    apiKey: Option.map(apiKey, (key) => Redacted.make(key.trim())),
    timeoutMs,
    maxSteps
  })
})

/** Reads and validates every setting. */
export const fromEnv: Effect.Effect<AgentwireSettings, ConfigInvalidError> = Effect.gen(function*() {
  const host = Option.getOrElse(yield* raw("AGENTWIRE_HOST"), () => "127.0.0.1").trim()
  const port = yield* integer("AGENTWIRE_PORT", 8080, 0, 65535)
  const maxMessageBytes = yield* integer("AGENTWIRE_MAX_MESSAGE_BYTES", 65536, 256, 16 * 1024 * 1024)
  const heartbeatIntervalMs = yield* integer("AGENTWIRE_HEARTBEAT_MS", 30_000, 0, 3_600_000)
  const levelText = Option.getOrElse(yield* raw("AGENTWIRE_LOG_LEVEL"), () => "info")
  const logLevel = LOG_LEVELS[levelText.trim().toLowerCase()]
  if (logLevel === undefined) {
    return yield* new ConfigInvalidError({
      variable: "AGENTWIRE_LOG_LEVEL",
      value: levelText,
      expected: "one of trace, debug, info, warn, error, fatal, none"
    })
  }
  const secret = yield* raw("AGENTWIRE_JWT_SECRET")
  if (Option.isSome(secret) && secret.value.length < MIN_SECRET_LENGTH) {
    return yield* new ConfigInvalidError({
      variable: "AGENTWIRE_JWT_SECRET",
      expected: `at least ${MIN_SECRET_LENGTH} characters long (it is ${secret.value.length})`
    })
  }
  const production = Option.getOrUndefined(yield* raw("NODE_ENV"))?.trim() === "production"
  const llm = yield* llmFromEnv
  const streamCoalesceMs = yield* integer("AGENTWIRE_STREAM_COALESCE_MS", DEFAULT_STREAM_COALESCE_MS, 0, 10_000)
  return {
    host,
    port,
    jwtSecret: Option.map(secret, Redacted.make),
    maxMessageBytes,
    heartbeatIntervalMs,
    logLevel,
    production,
    llm,
    streamCoalesceMs
  }
})

/** Settings from the environment. */
export const layerFromEnv: Layer.Layer<AgentwireConfig, ConfigInvalidError> = Layer.effect(AgentwireConfig, fromEnv)

/** Settings given as values (defaults for what is left out); for tests and embedders. */
export const layer = (settings: Partial<AgentwireSettings> = {}): Layer.Layer<AgentwireConfig> =>
  Layer.succeed(AgentwireConfig, {
    host: "127.0.0.1",
    port: 0,
    jwtSecret: Option.none(),
    maxMessageBytes: 65536,
    heartbeatIntervalMs: 30_000,
    logLevel: "Info",
    production: false,
    llm: Option.none(),
    streamCoalesceMs: DEFAULT_STREAM_COALESCE_MS,
    ...settings
  })
