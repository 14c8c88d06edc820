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
 * | `AGENTWIRE_HEARTBEAT_MS` | `30000` | ping interval; a socket that made no progress for one interval is dropped (0 = off) |
 * | `AGENTWIRE_SOCKET_BUFFER_BYTES` | `8388608` (8 MiB) | unsent bytes one socket may hold before it is dropped |
 * | `AGENTWIRE_PROCESS_BUFFER_BYTES` | `268435456` (256 MiB) | unsent bytes all sockets may hold; the largest is dropped first |
 * | `NODE_ENV` | none | `production` makes a missing secret a startup failure |
 *
 * Values come from the current `ConfigProvider` (the process environment by
 * default), so tests can swap it. Every bad value is a `ConfigInvalidError`
 * whose message names the variable.
 *
 * @module
 */
import { Config, Effect, Layer, type LogLevel, Option, Redacted } from "effect"
import { AgentwireConfig, type AgentwireSettings, ConfigInvalidError } from "../services/AgentwireConfig.ts"

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

/** Reads and validates every setting. */
export const fromEnv: Effect.Effect<AgentwireSettings, ConfigInvalidError> = Effect.gen(function*() {
  const host = Option.getOrElse(yield* raw("AGENTWIRE_HOST"), () => "127.0.0.1").trim()
  const port = yield* integer("AGENTWIRE_PORT", 8080, 0, 65535)
  const maxMessageBytes = yield* integer("AGENTWIRE_MAX_MESSAGE_BYTES", 65536, 256, 16 * 1024 * 1024)
  const heartbeatIntervalMs = yield* integer("AGENTWIRE_HEARTBEAT_MS", 30_000, 0, 3_600_000)
  const maxSocketBufferBytes = yield* integer("AGENTWIRE_SOCKET_BUFFER_BYTES", DEFAULT_SOCKET_BUFFER_BYTES, 65536, 1024 ** 3)
  const maxProcessBufferBytes = yield* integer("AGENTWIRE_PROCESS_BUFFER_BYTES", DEFAULT_PROCESS_BUFFER_BYTES, 65536, 64 * 1024 ** 3)
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
  return {
    host,
    port,
    jwtSecret: Option.map(secret, Redacted.make),
    maxMessageBytes,
    heartbeatIntervalMs,
    maxSocketBufferBytes,
    maxProcessBufferBytes,
    logLevel,
    production
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
    maxSocketBufferBytes: DEFAULT_SOCKET_BUFFER_BYTES,
    maxProcessBufferBytes: DEFAULT_PROCESS_BUFFER_BYTES,
    logLevel: "Info",
    production: false,
    ...settings
  })
