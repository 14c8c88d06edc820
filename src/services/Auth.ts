/**
 * Auth: turns a bearer token into a verified user id and expiry.
 *
 * Implemented with JWTs (`jose`) by `layers/AuthJwt.ts`. The policy (see
 * docs/protocol.md, "Authentication"):
 *
 * - `HS256` tokens are checked against `AGENTWIRE_JWT_SECRET`; asymmetric
 *   tokens (`RS*`, `PS*`, `ES*`, `EdDSA`) against the keys published at
 *   `AGENTWIRE_JWT_JWKS_URL` when it is set; any other `alg` is refused;
 * - `exp` is required; `exp` and `nbf` are checked with a clock-skew
 *   tolerance (`AGENTWIRE_JWT_CLOCK_SKEW_S`, default 30 s);
 * - `iss` must equal `AGENTWIRE_JWT_ISSUER` and `aud` must contain
 *   `AGENTWIRE_JWT_AUDIENCE`, each when set;
 * - `sub` is the user id and must be a valid id.
 *
 * Tokens never appear in errors or logs.
 *
 * @module
 */
import { Context, Data, type Effect } from "effect"

/** Every reason a token can be refused for, in the order they are documented. */
export const AuthErrorReasons = [
  "missing",
  "malformed",
  "unsupported_algorithm",
  "unknown_key",
  "jwks_unavailable",
  "invalid_signature",
  "missing_exp",
  "expired",
  "not_yet_valid",
  "wrong_issuer",
  "wrong_audience",
  "invalid_subject"
] as const

/** Why a token was refused. */
export type AuthErrorReason = typeof AuthErrorReasons[number]

/** Why a token was refused. The token itself is never included, in `reason` nor in `message`. */
export class AuthError extends Data.TaggedError("AuthError")<{
  readonly reason: AuthErrorReason
}> {
  override get message(): string {
    switch (this.reason) {
      case "missing":
        return "no token: send Authorization: Bearer <jwt>, the subprotocol jwt.<jwt>, or ?token=<jwt>"
      case "malformed":
        return "token is not a well-formed JWT"
      case "unsupported_algorithm":
        return "token alg is not accepted (HS256 with the server's secret, or RS/PS/ES/EdDSA when a JWKS URL is configured)"
      case "unknown_key":
        return "token was signed by a key that is not in the JWKS (unknown kid)"
      case "jwks_unavailable":
        return "token cannot be verified now: the JWKS (AGENTWIRE_JWT_JWKS_URL) could not be fetched"
      case "invalid_signature":
        return "token signature does not verify"
      case "missing_exp":
        return "token has no exp claim; tokens must expire"
      case "expired":
        return "token has expired"
      case "not_yet_valid":
        return "token is not valid yet (nbf is in the future)"
      case "wrong_issuer":
        return "token iss is missing or is not the accepted issuer"
      case "wrong_audience":
        return "token aud is missing or does not name the accepted audience"
      case "invalid_subject":
        return "token sub is missing or not a valid user id"
    }
  }
}

/** A token that passed every check. */
export interface VerifiedToken {
  /** The token's `sub`. */
  readonly user_id: string
  /** The token's `exp`, in epoch milliseconds (without the clock-skew tolerance). */
  readonly expires_at: number
}

/** The token of an `Authorization: Bearer <token>` header value, if it is one. */
export const bearerToken = (authorization: string | undefined): string | undefined =>
  /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "")?.[1]

export class Auth extends Context.Service<Auth, {
  /**
   * Verifies a token against the policy above and returns its user id and
   * expiry. Fails with `AuthError` naming the first rule it breaks.
   */
  readonly verify: (token: string) => Effect.Effect<VerifiedToken, AuthError>
  /**
   * Signs an HS256 token for `user_id`, valid for `ttlSeconds`, with `iss`
   * and `aud` set when configured, so that it passes `verify`.
   */
  readonly issue: (user_id: string, ttlSeconds: number) => Effect.Effect<string>
}>()("agentwire/Auth") {}

/** No secret was configured where one is required (production without a JWKS URL). */
export class MissingSecretError extends Data.TaggedError("MissingSecretError")<{
  readonly variable: string
}> {
  override get message(): string {
    return `${this.variable} must be set when NODE_ENV=production (at least 32 characters), unless AGENTWIRE_JWT_JWKS_URL is set`
  }
}

/**
 * `text` with anything that looks like a credential replaced by `[redacted]`:
 * JWTs (`eyJ….….…`), `token=` query values, `Bearer` values and `jwt.` subprotocols.
 * Used on crash output, which may quote a request.
 */
export const redactTokens = (text: string): string =>
  text
    .replace(/eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*/g, "[redacted]")
    .replace(/([?&]token=)[^&\s"'#]*/gi, "$1[redacted]")
    .replace(/(Bearer\s+)[^\s"',]+/gi, "$1[redacted]")
    .replace(/(\bjwt\.)[^\s"',]+/g, "$1[redacted]")
