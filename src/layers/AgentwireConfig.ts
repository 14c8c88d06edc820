/**
 * Reads `AgentwireConfig` from environment variables.
 *
 * | variable | default | meaning |
 * |---|---|---|
 * | `AGENTWIRE_HOST` | `127.0.0.1` | interface to listen on |
 * | `AGENTWIRE_PORT` | `8080` | port (0 = any free port) |
 * | `AGENTWIRE_JWT_SECRET` | none | HS256 secret, at least 32 characters |
 * | `AGENTWIRE_JWT_ISSUER` | none | when set, a token's `iss` must equal it |
 * | `AGENTWIRE_JWT_AUDIENCE` | none | when set, a token's `aud` must be or contain it |
 * | `AGENTWIRE_JWT_CLOCK_SKEW_S` | `30` | tolerance for `exp` and `nbf`, 0 to 300 seconds |
 * | `AGENTWIRE_JWT_JWKS_URL` | none | http(s) URL of a JWKS; RS/PS/ES/EdDSA tokens are verified against it |
 * | `AGENTWIRE_ALLOWED_ORIGINS` | none | comma-separated origins (`https://app.example.com`) allowed to open a WebSocket; none = all |
 * | `AGENTWIRE_MAX_MESSAGE_BYTES` | `65536` | largest client frame |
 * | `AGENTWIRE_LOG_LEVEL` | `info` | trace, debug, info, warn, error, fatal, none |
 * | `AGENTWIRE_HEARTBEAT_MS` | `30000` | ping interval; a socket that made no progress for one interval is dropped (0 = off) |
 * | `AGENTWIRE_SOCKET_BUFFER_BYTES` | `8388608` (8 MiB) | unsent bytes one socket may hold before it is dropped (when `AGENTWIRE_PROCESS_BUFFER_BYTES` is smaller, that applies) |
 * | `AGENTWIRE_PROCESS_BUFFER_BYTES` | `268435456` (256 MiB) | unsent bytes all sockets may hold; the largest is dropped first |
 * | `AGENTWIRE_MAX_RUNS_PER_USER` | `5` | concurrent runs per user (`RUN_LIMIT_EXCEEDED`, HTTP 429) |
 * | `AGENTWIRE_MAX_RUNS` | `1000` × CPU cores | concurrent runs per process (`SERVER_BUSY`, HTTP 503) |
 * | `AGENTWIRE_RUN_STARTS_PER_SECOND` | `2` | sustained run starts per user per second (`RATE_LIMITED`); 0 = unlimited |
 * | `AGENTWIRE_RUN_START_BURST` | `10` | starts a user may make at once |
 * | `AGENTWIRE_IDEMPOTENCY_WINDOW_MS` | `300000` | how long a client `request_id` is remembered |
 * | `AGENTWIRE_RUN_TIMEOUT_MS` | `300000` | a run still going after this long ends `timed_out` |
 * | `AGENTWIRE_SHUTDOWN_GRACE_MS` | `10000` | at shutdown, how long runs in flight get to finish |
 * | `AGENTWIRE_MAX_CONNECTIONS_PER_USER` | `10` | a new connection over it closes the user's oldest with 4009 |
 * | `AGENTWIRE_MAX_FRAMES_PER_SECOND` | `200` | client frames handled per second per connection; faster senders are slowed (0 = unlimited) |
 * | `AGENTWIRE_RETENTION_MS` | `900000` (15 min) | how long a finished run's events stay resumable |
 * | `AGENTWIRE_MAX_EVENTS_PER_RUN` | `100000` | events one run may log; past it the run fails with `EVENT_LIMIT` |
 * | `AGENTWIRE_RETENTION_BYTES` | `268435456` (256 MiB) | bytes of events all run logs may hold; the oldest finished runs are evicted first |
 * | `AGENTWIRE_RETENTION_BYTES_PER_USER` | `67108864` (64 MiB) | one user's share: past it that user's oldest finished runs go first, then their run fails `LOG_FULL` |
 * | `AGENTWIRE_TOMBSTONE_MS` | `86400000` (24 h) | how long an expired run answers `RUN_EXPIRED` instead of `RUN_NOT_FOUND` |
 * | `AGENTWIRE_SSE_HEARTBEAT_MS` | `15000` | comment line sent on an idle SSE stream so proxies keep it open |
 * | `NODE_ENV` | none | `production` makes a missing secret a startup failure (unless a JWKS URL is set) |
 * | `AGENTWIRE_LLM_BASE_URL` | none | OpenAI-compatible API base URL (with `AGENTWIRE_LLM_MODEL`); enables `assistant` |
 * | `AGENTWIRE_LLM_MODEL` | none | model name (with `AGENTWIRE_LLM_BASE_URL`) |
 * | `AGENTWIRE_LLM_API_KEY` | none | bearer key; optional (local servers need none); never logged |
 * | `AGENTWIRE_LLM_TIMEOUT_MS` | `60000` | no byte from the model for this long = `LLM_TIMEOUT` |
 * | `AGENTWIRE_LLM_MAX_STEPS` | `8` | model turns per run before `LLM_MAX_STEPS` |
 * | `AGENTWIRE_STREAM_COALESCE_MS` | `20` | at most one `partial_result` per message this often (0 = every chunk) |
 * | `AGENTWIRE_REDIS_URL` | none | `redis://[user:password@]host:port[/db]` or `rediss://…`: several instances share Redis; never logged whole |
 * | `AGENTWIRE_REDIS_BUFFER_EVENTS` | `10000` | events an instance buffers while Redis is unreachable; past it a run fails with `LOG_UNAVAILABLE` |
 * | `AGENTWIRE_INSTANCE_LEASE_MS` | `10000` | life of an instance's lease in Redis (renewed every third); past it another instance closes its runs with `INSTANCE_LOST` (300 to 3600000) |
 *
 * Values come from the current `ConfigProvider` (the process environment by
 * default), so tests can swap it. Every bad value is a `ConfigInvalidError`
 * whose message names the variable.
 *
 * @module
 */
import { Config, Effect, Layer, type LogLevel, Option, Redacted } from "effect"
import { availableParallelism } from "node:os"
import { AgentwireConfig, type AgentwireSettings, ConfigInvalidError, type LlmSettings } from "../services/AgentwireConfig.ts"
import type { RunLimits } from "../services/RunAdmission.ts"
import type { RunLogSettings } from "../services/RunLog.ts"
import { normalizeOrigin } from "../services/OriginPolicy.ts"

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

/** Default `AGENTWIRE_SOCKET_BUFFER_BYTES`: 8 MiB, a few seconds of a busy run on a slow link. */
export const DEFAULT_SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
/** Default `AGENTWIRE_PROCESS_BUFFER_BYTES`: 256 MiB, about 32 sockets at their own bound. */
export const DEFAULT_PROCESS_BUFFER_BYTES = 256 * 1024 * 1024

/** Default run limits: see the table above for the reasons in `docs/protocol.md`. */
export const DEFAULT_RUN_LIMITS: RunLimits = {
  maxRunsPerUser: 5,
  maxRuns: 1000 * Math.max(1, availableParallelism()),
  runStartsPerSecond: 2,
  runStartBurst: 10,
  idempotencyWindowMs: 300_000
}
/** Default run log retention (`AGENTWIRE_RETENTION_MS`, `AGENTWIRE_MAX_EVENTS_PER_RUN`, `AGENTWIRE_RETENTION_BYTES`, `AGENTWIRE_TOMBSTONE_MS`). */
export const DEFAULT_RUN_LOG_SETTINGS: RunLogSettings = {
  retentionMs: 15 * 60_000,
  maxEventsPerRun: 100_000,
  maxBytes: 256 * 1024 * 1024,
  maxBytesPerUser: 64 * 1024 * 1024,
  tombstoneMs: 24 * 3_600_000
}
/** Default `AGENTWIRE_SSE_HEARTBEAT_MS`: 15 seconds, well under common proxy idle timeouts (60 s). */
export const DEFAULT_SSE_HEARTBEAT_MS = 15_000
/** Default `AGENTWIRE_RUN_TIMEOUT_MS`: 5 minutes. */
export const DEFAULT_RUN_TIMEOUT_MS = 300_000
/** Default `AGENTWIRE_SHUTDOWN_GRACE_MS`: 10 seconds. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000
/** Default `AGENTWIRE_MAX_CONNECTIONS_PER_USER`. */
export const DEFAULT_MAX_CONNECTIONS_PER_USER = 10
/** Default `AGENTWIRE_MAX_FRAMES_PER_SECOND`. */
export const DEFAULT_MAX_FRAMES_PER_SECOND = 200

/** Shortest accepted `AGENTWIRE_JWT_SECRET` (HS256 wants at least 256 bits). */
export const MIN_SECRET_LENGTH = 32

/** Default `AGENTWIRE_JWT_CLOCK_SKEW_S`, in seconds. */
export const DEFAULT_CLOCK_SKEW_SECONDS = 30
/** Largest accepted `AGENTWIRE_JWT_CLOCK_SKEW_S`, in seconds. */
export const MAX_CLOCK_SKEW_SECONDS = 300

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

/** A trimmed string setting. */
const text = (variable: string) => Effect.map(raw(variable), Option.map((value) => value.trim()))

/** `AGENTWIRE_JWT_JWKS_URL`: an absolute http(s) URL. */
const jwksUrl = Effect.flatMap(text("AGENTWIRE_JWT_JWKS_URL"), (value) => {
  if (Option.isNone(value)) return Effect.succeed(Option.none<string>())
  const url = URL.parse(value.value)
  return url !== null && (url.protocol === "https:" || url.protocol === "http:") && url.hostname !== ""
    ? Effect.succeed(Option.some(url.href))
    : Effect.fail(
      new ConfigInvalidError({ variable: "AGENTWIRE_JWT_JWKS_URL", value: value.value, expected: "an http(s) URL" })
    )
})

/** `AGENTWIRE_ALLOWED_ORIGINS`: comma-separated origins, normalised. */
const allowedOrigins = Effect.flatMap(raw("AGENTWIRE_ALLOWED_ORIGINS"), (value) => {
  if (Option.isNone(value)) return Effect.succeed(Option.none<ReadonlyArray<string>>())
  const origins: Array<string> = []
  for (const item of value.value.split(",").map((part) => part.trim()).filter((part) => part.length > 0)) {
    const origin = normalizeOrigin(item)
    if (origin === undefined) {
      return Effect.fail(
        new ConfigInvalidError({
          variable: "AGENTWIRE_ALLOWED_ORIGINS",
          value: item,
          expected: "a comma-separated list of origins scheme://host[:port] without path or wildcard " +
            "(unset it to allow every origin)"
        })
      )
    }
    if (!origins.includes(origin)) origins.push(origin)
  }
  return origins.length > 0
    ? Effect.succeed(Option.some(origins))
    : Effect.fail(
      new ConfigInvalidError({
        variable: "AGENTWIRE_ALLOWED_ORIGINS",
        value: value.value,
        expected: "at least one origin scheme://host[:port] (unset it to allow every origin)"
      })
    )
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
  const maxSocketBufferBytes = yield* integer("AGENTWIRE_SOCKET_BUFFER_BYTES", DEFAULT_SOCKET_BUFFER_BYTES, 65536, 1024 ** 3)
  const maxProcessBufferBytes = yield* integer("AGENTWIRE_PROCESS_BUFFER_BYTES", DEFAULT_PROCESS_BUFFER_BYTES, 65536, 64 * 1024 ** 3)
  const runLimits: RunLimits = {
    maxRunsPerUser: yield* integer("AGENTWIRE_MAX_RUNS_PER_USER", DEFAULT_RUN_LIMITS.maxRunsPerUser, 1, 10_000),
    maxRuns: yield* integer("AGENTWIRE_MAX_RUNS", DEFAULT_RUN_LIMITS.maxRuns, 1, 1_000_000),
    runStartsPerSecond: yield* integer("AGENTWIRE_RUN_STARTS_PER_SECOND", DEFAULT_RUN_LIMITS.runStartsPerSecond, 0, 100_000),
    runStartBurst: yield* integer("AGENTWIRE_RUN_START_BURST", DEFAULT_RUN_LIMITS.runStartBurst, 1, 100_000),
    idempotencyWindowMs: yield* integer("AGENTWIRE_IDEMPOTENCY_WINDOW_MS", DEFAULT_RUN_LIMITS.idempotencyWindowMs, 1000, 86_400_000)
  }
  const runTimeoutMs = yield* integer("AGENTWIRE_RUN_TIMEOUT_MS", DEFAULT_RUN_TIMEOUT_MS, 100, 86_400_000)
  const shutdownGraceMs = yield* integer("AGENTWIRE_SHUTDOWN_GRACE_MS", DEFAULT_SHUTDOWN_GRACE_MS, 0, 3_600_000)
  const maxConnectionsPerUser = yield* integer("AGENTWIRE_MAX_CONNECTIONS_PER_USER", DEFAULT_MAX_CONNECTIONS_PER_USER, 1, 10_000)
  const maxFramesPerSecond = yield* integer("AGENTWIRE_MAX_FRAMES_PER_SECOND", DEFAULT_MAX_FRAMES_PER_SECOND, 0, 1_000_000)
  const runLog: RunLogSettings = {
    retentionMs: yield* integer("AGENTWIRE_RETENTION_MS", DEFAULT_RUN_LOG_SETTINGS.retentionMs, 1000, 7 * 86_400_000),
    maxEventsPerRun: yield* integer("AGENTWIRE_MAX_EVENTS_PER_RUN", DEFAULT_RUN_LOG_SETTINGS.maxEventsPerRun, 100, 10_000_000),
    maxBytes: yield* integer("AGENTWIRE_RETENTION_BYTES", DEFAULT_RUN_LOG_SETTINGS.maxBytes, 1024 * 1024, 64 * 1024 ** 3),
    maxBytesPerUser: yield* integer("AGENTWIRE_RETENTION_BYTES_PER_USER", DEFAULT_RUN_LOG_SETTINGS.maxBytesPerUser, 64 * 1024, 64 * 1024 ** 3),
    tombstoneMs: yield* integer("AGENTWIRE_TOMBSTONE_MS", DEFAULT_RUN_LOG_SETTINGS.tombstoneMs, 0, 30 * 86_400_000)
  }
  const sseHeartbeatMs = yield* integer("AGENTWIRE_SSE_HEARTBEAT_MS", DEFAULT_SSE_HEARTBEAT_MS, 100, 3_600_000)
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
  const jwtIssuer = yield* text("AGENTWIRE_JWT_ISSUER")
  const jwtAudience = yield* text("AGENTWIRE_JWT_AUDIENCE")
  const jwtClockSkewSeconds = yield* integer("AGENTWIRE_JWT_CLOCK_SKEW_S", DEFAULT_CLOCK_SKEW_SECONDS, 0, MAX_CLOCK_SKEW_SECONDS)
  const jwtJwksUrl = yield* jwksUrl
  const origins = yield* allowedOrigins
  const production = Option.getOrUndefined(yield* raw("NODE_ENV"))?.trim() === "production"
  const llm = yield* llmFromEnv
  const streamCoalesceMs = yield* integer("AGENTWIRE_STREAM_COALESCE_MS", DEFAULT_STREAM_COALESCE_MS, 0, 10_000)
  const redisUrl = yield* redisUrlFromEnv
  const redisBufferEvents = yield* integer("AGENTWIRE_REDIS_BUFFER_EVENTS", DEFAULT_REDIS_BUFFER_EVENTS, 0, 10_000_000)
  const instanceLeaseMs = yield* integer("AGENTWIRE_INSTANCE_LEASE_MS", DEFAULT_INSTANCE_LEASE_MS, MIN_INSTANCE_LEASE_MS, 3_600_000)
  return {
    host,
    port,
    jwtSecret: Option.map(secret, Redacted.make),
    jwtIssuer,
    jwtAudience,
    jwtClockSkewSeconds,
    jwtJwksUrl,
    allowedOrigins: origins,
    maxMessageBytes,
    heartbeatIntervalMs,
    maxSocketBufferBytes,
    maxProcessBufferBytes,
    runLimits,
    runTimeoutMs,
    shutdownGraceMs,
    maxConnectionsPerUser,
    maxFramesPerSecond,
    runLog,
    sseHeartbeatMs,
    logLevel,
    production,
    llm,
    streamCoalesceMs,
    redisUrl,
    redisBufferEvents,
    instanceLeaseMs
  }
})

/** Default `AGENTWIRE_REDIS_BUFFER_EVENTS`. */
export const DEFAULT_REDIS_BUFFER_EVENTS = 10_000

/** Default `AGENTWIRE_INSTANCE_LEASE_MS`: 10 s. */
export const DEFAULT_INSTANCE_LEASE_MS = 10_000
/** Shortest `AGENTWIRE_INSTANCE_LEASE_MS`: renewals every 100 ms, still well above a Redis round trip. */
export const MIN_INSTANCE_LEASE_MS = 300

/**
 * `AGENTWIRE_REDIS_URL`: a redis:// or rediss:// URL with a host (and a port
 * from 1 to 65535 when it has one); the value is never echoed (it may hold a
 * password). Empty counts as unset, like every variable: the process then
 * runs in memory, and says so in its startup log.
 */
export const redisUrlFromEnv: Effect.Effect<Option.Option<Redacted.Redacted<string>>, ConfigInvalidError> = Effect.flatMap(
  raw("AGENTWIRE_REDIS_URL"),
  (value) => {
    if (Option.isNone(value)) return Effect.succeed(Option.none())
    const variable = "AGENTWIRE_REDIS_URL"
    const text = value.value.trim()
    // the port, when the URL has one (read apart from the URL parser, which refuses a bad port without saying so)
    const port = /^[a-z][a-z0-9+.-]*:\/\/(?:[^/?#]*@)?(?:\[[^\]]*\]|[^:/?#@]*)(?::([^/?#@]*))?(?:[/?#]|$)/i.exec(text)?.[1]
    const badPort = port !== undefined && port !== "" && (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535)
    const portProblem = () =>
      new ConfigInvalidError({
        variable,
        expected: `a redis:// or rediss:// URL whose port is from 1 to 65535 (its port is ${JSON.stringify(port!.slice(0, 16))})`
      })
    let parsed: URL
    try {
      parsed = new URL(text)
    } catch {
      if (badPort) return Effect.fail(portProblem())
      return Effect.fail(new ConfigInvalidError({
        variable,
        expected: "a redis:// or rediss:// URL (redis://[user:password@]host:port[/db]; percent-encode @ : / # ? in the password)"
      }))
    }
    if (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:") {
      return Effect.fail(new ConfigInvalidError({ variable, value: parsed.protocol, expected: "a redis:// or rediss:// URL" }))
    }
    if (badPort) return Effect.fail(portProblem())
    if (parsed.hostname === "") return Effect.fail(new ConfigInvalidError({ variable, expected: "a redis:// URL with a host" }))
    if (parsed.pathname !== "" && parsed.pathname !== "/" && !/^\/\d+$/.test(parsed.pathname)) {
      return Effect.fail(new ConfigInvalidError({ variable, expected: "a redis:// URL whose path is a database number (/0)" }))
    }
    return Effect.succeed(Option.some(Redacted.make(text)))
  }
)

/** Settings from the environment. */
export const layerFromEnv: Layer.Layer<AgentwireConfig, ConfigInvalidError> = Layer.effect(AgentwireConfig, fromEnv)

/** Settings given as values (defaults for what is left out); for tests and embedders. */
export const layer = (settings: Partial<AgentwireSettings> = {}): Layer.Layer<AgentwireConfig> =>
  Layer.succeed(AgentwireConfig, {
    host: "127.0.0.1",
    port: 0,
    jwtSecret: Option.none(),
    jwtIssuer: Option.none(),
    jwtAudience: Option.none(),
    jwtClockSkewSeconds: DEFAULT_CLOCK_SKEW_SECONDS,
    jwtJwksUrl: Option.none(),
    allowedOrigins: Option.none(),
    maxMessageBytes: 65536,
    heartbeatIntervalMs: 30_000,
    maxSocketBufferBytes: DEFAULT_SOCKET_BUFFER_BYTES,
    maxProcessBufferBytes: DEFAULT_PROCESS_BUFFER_BYTES,
    runLimits: DEFAULT_RUN_LIMITS,
    runTimeoutMs: DEFAULT_RUN_TIMEOUT_MS,
    shutdownGraceMs: DEFAULT_SHUTDOWN_GRACE_MS,
    maxConnectionsPerUser: DEFAULT_MAX_CONNECTIONS_PER_USER,
    maxFramesPerSecond: DEFAULT_MAX_FRAMES_PER_SECOND,
    runLog: DEFAULT_RUN_LOG_SETTINGS,
    sseHeartbeatMs: DEFAULT_SSE_HEARTBEAT_MS,
    logLevel: "Info",
    production: false,
    llm: Option.none(),
    streamCoalesceMs: DEFAULT_STREAM_COALESCE_MS,
    redisUrl: Option.none(),
    redisBufferEvents: DEFAULT_REDIS_BUFFER_EVENTS,
    instanceLeaseMs: DEFAULT_INSTANCE_LEASE_MS,
    ...settings
  })
