/**
 * `Auth` with HS256 JWTs verified by `jose`.
 *
 * The secret comes from `AgentwireConfig`. Without one, outside production, a
 * random secret is generated for this process (tokens die with it); in
 * production a missing secret fails startup with `MissingSecretError`.
 *
 * @module
 */
import { Effect, Layer, Option, Redacted, Schema } from "effect"
import { errors as JoseErrors, jwtVerify, SignJWT } from "jose"
import { Id } from "../protocol/Protocol.ts"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { Auth, AuthError, MissingSecretError } from "../services/Auth.ts"

const isUserId = Schema.is(Id)

const reasonOf = (error: unknown): AuthError["reason"] => {
  if (error instanceof JoseErrors.JWTExpired) return "expired"
  if (error instanceof JoseErrors.JWSSignatureVerificationFailed) return "invalid_signature"
  return "malformed"
}

/** `Auth` over a known secret. */
export const make = (secret: Redacted.Redacted<string>) => {
  const key = new TextEncoder().encode(Redacted.value(secret))
  return Auth.of({
    verify: (token) =>
      Effect.tryPromise({
        try: () => jwtVerify(token, key, { algorithms: ["HS256"] }),
        catch: (error) => new AuthError({ reason: reasonOf(error) })
      }).pipe(
        Effect.flatMap(({ payload }) =>
          typeof payload.sub === "string" && isUserId(payload.sub)
            ? Effect.succeed(payload.sub)
            : Effect.fail(new AuthError({ reason: "invalid_subject" }))
        )
      ),
    issue: (user_id, ttlSeconds) =>
      Effect.promise(() =>
        new SignJWT({})
          .setProtectedHeader({ alg: "HS256", typ: "JWT" })
          .setSubject(user_id)
          .setIssuedAt()
          .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
          .sign(key)
      )
  })
}

/** Generates a random secret for a development process. */
export const generateSecret = (): Redacted.Redacted<string> =>
  Redacted.make(Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64url"))

/** `Auth` from `AgentwireConfig`. */
export const layer: Layer.Layer<Auth, MissingSecretError, AgentwireConfig> = Layer.effect(
  Auth,
  Effect.gen(function*() {
    const config = yield* AgentwireConfig
    if (Option.isSome(config.jwtSecret)) return make(config.jwtSecret.value)
    if (config.production) return yield* new MissingSecretError({ variable: "AGENTWIRE_JWT_SECRET" })
    return make(generateSecret())
  })
)
