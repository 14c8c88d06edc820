/**
 * Auth: turns a bearer token into a user id.
 *
 * Implemented with HS256 JWTs (`jose`) by `layers/AuthJwt.ts`: `sub` is the user
 * id, `exp` is honoured. Tokens never appear in errors or logs.
 *
 * @module
 */
import { Context, Data, type Effect } from "effect"

/** Why a token was refused. The token itself is never included. */
export class AuthError extends Data.TaggedError("AuthError")<{
  readonly reason: "missing" | "malformed" | "expired" | "invalid_signature" | "invalid_subject"
}> {
  override get message(): string {
    switch (this.reason) {
      case "missing":
        return "no token: send Authorization: Bearer <jwt>, the subprotocol jwt.<jwt>, or ?token=<jwt>"
      case "malformed":
        return "token is not a valid HS256 JWT"
      case "expired":
        return "token has expired"
      case "invalid_signature":
        return "token signature does not verify"
      case "invalid_subject":
        return "token sub is missing or not a valid user id"
    }
  }
}

/** The token of an `Authorization: Bearer <token>` header value, if it is one. */
export const bearerToken = (authorization: string | undefined): string | undefined =>
  /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "")?.[1]

export class Auth extends Context.Service<Auth, {
  /** Verifies a token and returns the user id from its `sub`. */
  readonly verify: (token: string) => Effect.Effect<string, AuthError>
  /** Signs a token for `user_id`, valid for `ttlSeconds`. */
  readonly issue: (user_id: string, ttlSeconds: number) => Effect.Effect<string>
}>()("agentwire/Auth") {}

/** No secret was configured where one is required (production). */
export class MissingSecretError extends Data.TaggedError("MissingSecretError")<{
  readonly variable: string
}> {
  override get message(): string {
    return `${this.variable} must be set when NODE_ENV=production (at least 32 characters)`
  }
}
