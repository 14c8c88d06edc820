/**
 * Redis at startup: the typed failure every Redis-backed layer reports when it
 * cannot connect (unreachable, wrong credentials, bad TLS), naming the target
 * `host:port` and the variable it came from, never the password.
 *
 * @module
 */
import { Data } from "effect"

/** A Redis-backed layer could not start: `target` is `host:port`, `reason` a short cause (no credentials). */
export class RedisStartError extends Data.TaggedError("RedisStartError")<{
  /** `host:port` of the Redis it tried. */
  readonly target: string
  /** Where the URL came from (e.g. `AGENTWIRE_REDIS_URL`). */
  readonly variable: string
  /** What went wrong: `connection refused`, `wrong credentials`, … */
  readonly reason: string
}> {
  override get message(): string {
    return `cannot reach Redis at ${this.target} (${this.variable}): ${this.reason}`
  }
}

/** `host:port` of a redis:// or rediss:// URL (port 6379 when absent); never the user or password. */
export const redisTarget = (url: string): string => {
  try {
    const parsed = new URL(url)
    const host = parsed.hostname === "" ? "localhost" : parsed.hostname
    return `${host}:${parsed.port === "" ? "6379" : parsed.port}`
  } catch {
    return "(unparsable URL)"
  }
}

/** A short reason for a connection failure, from node-redis / Node errors (never echoes their text when it could hold a secret). */
export const redisStartReason = (cause: unknown): string => {
  const seen = new Set<unknown>()
  let current: unknown = cause
  while (current !== null && typeof current === "object" && !seen.has(current)) {
    seen.add(current)
    // already said (a probe's failure, wrapped on its way up)
    if (current instanceof RedisStartError) return current.reason
    const { code, message } = current as { code?: unknown; message?: unknown }
    const text = typeof message === "string" ? message : ""
    if (code === "ECONNREFUSED") return "connection refused"
    if (code === "ENOTFOUND" || code === "EAI_AGAIN") return "host not found"
    if (code === "ETIMEDOUT" || /timeout/i.test(text)) return "connection timed out"
    if (code === "ECONNRESET") return "connection reset"
    if (/WRONGPASS|invalid username-password/i.test(text)) return "wrong credentials (WRONGPASS)"
    if (/NOAUTH/i.test(text)) return "authentication required (NOAUTH): put the password in the URL"
    if (/NOPERM/i.test(text)) return "the user lacks a permission (NOPERM)"
    if (/certificate|SSL|TLS/i.test(text)) return "TLS handshake failed"
    if (/ECONNREFUSED/.test(text)) return "connection refused"
    if (/ENOTFOUND|EAI_AGAIN/.test(text)) return "host not found"
    const next = current as { cause?: unknown; socketError?: unknown; originalError?: unknown }
    current = next.socketError ?? next.originalError ?? next.cause
  }
  return "connection failed"
}
