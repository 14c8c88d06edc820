/**
 * AgentwireConfig: the server's settings, read once at startup.
 *
 * `layers/AgentwireConfig.ts` reads them from environment variables
 * (`layerFromEnv`) or takes them as values (`layer`). A bad value is a
 * `ConfigInvalidError` naming the variable.
 *
 * @module
 */
import type { RunLimits } from "./RunAdmission.ts"
import type { RunLogSettings } from "./RunLog.ts"
import { Context, Data, type LogLevel, type Option, type Redacted } from "effect"

export interface AgentwireSettings {
  readonly host: string
  /** 0 picks a free port. */
  readonly port: number
  /** HS256 secret; none means "generate one for this process" (refused in production unless `jwtJwksUrl` is set). */
  readonly jwtSecret: Option.Option<Redacted.Redacted<string>>
  /** When set, a token's `iss` must equal it (and `issue` sets it). */
  readonly jwtIssuer: Option.Option<string>
  /** When set, a token's `aud` must be or contain it (and `issue` sets it). */
  readonly jwtAudience: Option.Option<string>
  /** Clock-skew tolerance applied to `exp` and `nbf`, in seconds (0 to 300). */
  readonly jwtClockSkewSeconds: number
  /** http(s) URL of a JSON Web Key Set; when set, RS/PS/ES/EdDSA tokens are verified against its keys. */
  readonly jwtJwksUrl: Option.Option<string>
  /** Normalised browser origins allowed to open a WebSocket; none = every origin (see `services/OriginPolicy.ts`). */
  readonly allowedOrigins: Option.Option<ReadonlyArray<string>>
  /** Largest client frame accepted; larger ones close the connection with 1009. */
  readonly maxMessageBytes: number
  /** Ping every socket this often; one that has not answered the previous ping is dropped. 0 = off. */
  readonly heartbeatIntervalMs: number
  /** Unsent bytes one socket may hold; past it the socket is dropped (`slow_consumer`). */
  readonly maxSocketBufferBytes: number
  /** Unsent bytes all sockets together may hold; past it the socket holding most is dropped first. */
  readonly maxProcessBufferBytes: number
  /** Run admission limits (see `RunAdmission`). */
  readonly runLimits: RunLimits
  /** A run still going after this long ends with `RUN_TIMEOUT` / `timed_out` (`AGENTWIRE_RUN_TIMEOUT_MS`). */
  readonly runTimeoutMs: number
  /** At shutdown, runs in flight get this long to finish before they are stopped (`AGENTWIRE_SHUTDOWN_GRACE_MS`). */
  readonly shutdownGraceMs: number
  /** Open connections per user; a new one over it closes the user's oldest with 4009 (`AGENTWIRE_MAX_CONNECTIONS_PER_USER`). */
  readonly maxConnectionsPerUser: number
  /** Client frames handled per second per connection; faster senders are slowed by pausing reads (`AGENTWIRE_MAX_FRAMES_PER_SECOND`, 0 = unlimited). */
  readonly maxFramesPerSecond: number
  /** Run log retention: how long, how many events per run, how many bytes in all, tombstones (see `RunLog`). */
  readonly runLog: RunLogSettings
  /** An idle SSE stream gets a comment line this often, in milliseconds (`AGENTWIRE_SSE_HEARTBEAT_MS`). */
  readonly sseHeartbeatMs: number
  readonly logLevel: LogLevel.LogLevel
  /** `NODE_ENV=production`. */
  readonly production: boolean

  // --- language model (the `assistant` agent) ---
  /** The OpenAI-compatible endpoint; none means the `assistant` agent is not available. */
  readonly llm: Option.Option<LlmSettings>
  /** At most one `partial_result` per message this often, in milliseconds (0 = one per provider chunk). */
  readonly streamCoalesceMs: number

  // --- several instances on Redis ---
  /** `AGENTWIRE_REDIS_URL` (redis:// or rediss://, may hold a password): when set, the run log and shared state live in Redis. */
  readonly redisUrl: Option.Option<Redacted.Redacted<string>>
  /** Events all runs of this instance may buffer while Redis is unreachable (`AGENTWIRE_REDIS_BUFFER_EVENTS`); past it a run fails with `LOG_UNAVAILABLE`. */
  readonly redisBufferEvents: number
  /**
   * Life of this instance's lease in Redis without renewal, in milliseconds
   * (`AGENTWIRE_INSTANCE_LEASE_MS`; renewed every third of it). Once an
   * instance's lease has expired, another instance closes its runs in flight
   * with `INSTANCE_LOST` and frees their slots. Unused without `redisUrl`.
   */
  readonly instanceLeaseMs: number
}

/** Where and how the `assistant` agent reaches its language model. */
export interface LlmSettings {
  /** Base URL of an OpenAI-compatible API, e.g. `http://127.0.0.1:11434/v1`; `/chat/completions` is appended. */
  readonly baseUrl: string
  /** Model name sent with every request. */
  readonly model: string
  /** Sent as `Authorization: Bearer …`; none for local servers. Never logged. */
  readonly apiKey: Option.Option<Redacted.Redacted<string>>
  /** No byte from the model for this long (ms) fails the run with `LLM_TIMEOUT`. */
  readonly timeoutMs: number
  /** Model turns per run; a run still asking for tools after that many fails with `LLM_MAX_STEPS`. */
  readonly maxSteps: number
}

/** A configuration value is invalid; the message names the variable. */
export class ConfigInvalidError extends Data.TaggedError("ConfigInvalidError")<{
  readonly variable: string
  /** The offending value; absent for secrets, which are never echoed. */
  readonly value?: string | undefined
  readonly expected: string
}> {
  override get message(): string {
    const got = this.value === undefined ? "" : ` (got ${JSON.stringify(this.value.slice(0, 64))})`
    return `${this.variable} must be ${this.expected}${got}`
  }
}

export class AgentwireConfig extends Context.Service<AgentwireConfig, AgentwireSettings>()("agentwire/AgentwireConfig") {}
