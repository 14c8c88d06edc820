/**
 * `Auth` with JWTs verified by `jose`: HS256 against a shared secret, and
 * RS/PS/ES/EdDSA against a remote JSON Web Key Set (an identity provider's
 * `jwks_uri`).
 *
 * The policy comes from `AgentwireConfig` (see `services/Auth.ts` and
 * docs/protocol.md, "Authentication"). Without a secret, outside production,
 * a random secret is generated for this process (tokens die with it). In
 * production a missing secret fails startup with `MissingSecretError`, unless
 * `AGENTWIRE_JWT_JWKS_URL` is set: then the process still generates a random
 * secret, so only tokens it issues itself (`Auth.issue`) pass as HS256.
 *
 * The JWKS is fetched lazily (on the first asymmetric token) with jose's
 * `createRemoteJWKSet` and cached: keys are reused for `cacheMaxAge`
 * (10 minutes), after which the next token refetches them; a token whose
 * `kid` is not in the cached set triggers a refetch at most once per
 * `cooldownDuration` (30 s) so that key rotation is picked up but unknown
 * kids cannot hammer the provider; a fetch is aborted after `timeoutDuration`
 * (5 s). A failed fetch refuses the token with `jwks_unavailable`.
 *
 * @module
 */
import { Effect, Layer, Option, Redacted, Schema } from "effect"
import {
  createRemoteJWKSet,
  errors as JoseErrors,
  type JWTVerifyGetKey,
  jwtVerify,
  type JWTVerifyOptions,
  type RemoteJWKSetOptions,
  SignJWT
} from "jose"
import { Id } from "../protocol/Protocol.ts"
import { AgentwireConfig, type AgentwireSettings } from "../services/AgentwireConfig.ts"
import { Auth, AuthError, type AuthErrorReason, MissingSecretError, type VerifiedToken } from "../services/Auth.ts"

const isUserId = Schema.is(Id)

/** The algorithm checked against the shared secret. */
export const SYMMETRIC_ALGORITHM = "HS256"

/** Algorithms checked against the JWKS, when one is configured. */
export const ASYMMETRIC_ALGORITHMS: ReadonlyArray<string> = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
  "Ed25519"
]

/** jose's remote JWKS options used unless overridden: see the module comment. */
export const DEFAULT_JWKS_OPTIONS: RemoteJWKSetOptions = {
  timeoutDuration: 5_000,
  cooldownDuration: 30_000,
  cacheMaxAge: 600_000
}

/** What `make` checks besides the signature. */
export interface AuthJwtPolicy {
  /** When set, `iss` must equal it; `issue` sets it. */
  readonly issuer?: string | undefined
  /** When set, `aud` must be or contain it; `issue` sets it. */
  readonly audience?: string | undefined
  /** Tolerance for `exp` and `nbf`, in seconds. Default 30. */
  readonly clockSkewSeconds?: number | undefined
  /** http(s) URL of a JWKS; without it asymmetric tokens are refused (`unsupported_algorithm`). */
  readonly jwksUrl?: string | undefined
  /** Overrides of `DEFAULT_JWKS_OPTIONS`. */
  readonly jwksOptions?: RemoteJWKSetOptions | undefined
}

/** A refusal decided while resolving the key, carried through jose unchanged. */
class KeyRefused extends Error {
  readonly reason: AuthErrorReason
  constructor(reason: AuthErrorReason) {
    super(reason)
    this.reason = reason
  }
}

/** Maps whatever `jwtVerify` threw to a refusal reason. */
const reasonOf = (error: unknown): AuthErrorReason => {
  if (error instanceof KeyRefused) return error.reason
  if (error instanceof JoseErrors.JWTExpired) return error.claim === "exp" ? "expired" : "malformed"
  if (error instanceof JoseErrors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case "exp":
        return error.reason === "missing" ? "missing_exp" : "malformed"
      case "nbf":
        return error.reason === "check_failed" ? "not_yet_valid" : "malformed"
      case "iss":
        return "wrong_issuer"
      case "aud":
        return "wrong_audience"
      default:
        return "malformed"
    }
  }
  if (error instanceof JoseErrors.JWSSignatureVerificationFailed) return "invalid_signature"
  if (error instanceof JoseErrors.JOSEAlgNotAllowed || error instanceof JoseErrors.JOSENotSupported) {
    return "unsupported_algorithm"
  }
  if (error instanceof JoseErrors.JWKSNoMatchingKey || error instanceof JoseErrors.JWKSMultipleMatchingKeys) {
    return "unknown_key"
  }
  if (error instanceof JoseErrors.JWKSTimeout || error instanceof JoseErrors.JWKSInvalid) return "jwks_unavailable"
  return "malformed"
}

/** Maps what the remote JWK set threw while finding a key. */
const jwksReasonOf = (error: unknown): AuthErrorReason => {
  if (error instanceof JoseErrors.JWKSNoMatchingKey || error instanceof JoseErrors.JWKSMultipleMatchingKeys) {
    return "unknown_key"
  }
  // an alg the JWKS cannot serve (e.g. a kty jose does not know for that alg)
  if (error instanceof JoseErrors.JOSENotSupported) return "unsupported_algorithm"
  // network error, timeout, non-200 answer, not JSON, not a JWKS
  return "jwks_unavailable"
}

/** `Auth` over a known secret and, optionally, a JWKS URL. */
/** The largest time a `Date` can hold (year 275760), in ms. */
const MAX_DATE_MS = 8.64e15

export const make = (secret: Redacted.Redacted<string>, policy: AuthJwtPolicy = {}) => {
  const key = new TextEncoder().encode(Redacted.value(secret))
  const clockSkewSeconds = policy.clockSkewSeconds ?? 30
  const jwks = policy.jwksUrl === undefined
    ? undefined
    : createRemoteJWKSet(new URL(policy.jwksUrl), { ...DEFAULT_JWKS_OPTIONS, ...policy.jwksOptions })

  const getKey: JWTVerifyGetKey = async (header, token) => {
    if (header.alg === SYMMETRIC_ALGORITHM) return key
    if (jwks === undefined) throw new KeyRefused("unsupported_algorithm")
    try {
      return await jwks(header, token)
    } catch (error) {
      throw new KeyRefused(jwksReasonOf(error))
    }
  }

  const options: JWTVerifyOptions = {
    algorithms: jwks === undefined ? [SYMMETRIC_ALGORITHM] : [SYMMETRIC_ALGORITHM, ...ASYMMETRIC_ALGORITHMS],
    requiredClaims: ["exp"],
    clockTolerance: clockSkewSeconds,
    ...(policy.issuer === undefined ? {} : { issuer: policy.issuer }),
    ...(policy.audience === undefined ? {} : { audience: policy.audience })
  }

  return Auth.of({
    verify: Effect.fn("Auth.verify")(function*(token: string) {
      const { payload } = yield* Effect.tryPromise({
        try: () => jwtVerify(token, getKey, options),
        catch: (error) => new AuthError({ reason: reasonOf(error) })
      })
      if (typeof payload.sub !== "string" || !isUserId(payload.sub)) {
        return yield* new AuthError({ reason: "invalid_subject" })
      }
      // requiredClaims and the exp check guarantee a number here; one past any real date
      // (beyond what a Date can hold) is not a real expiry: refused as malformed
      const expires_at = (payload.exp ?? 0) * 1000
      if (!Number.isFinite(expires_at) || expires_at > MAX_DATE_MS) return yield* new AuthError({ reason: "malformed" })
      yield* Effect.annotateCurrentSpan({ user_id: payload.sub })
      return { user_id: payload.sub, expires_at } satisfies VerifiedToken
    }, Effect.tapError((error) => Effect.annotateCurrentSpan({ "auth.refusal": error.reason }))),
    issue: Effect.fn("Auth.issue")(function*(user_id: string, ttlSeconds: number) {
      return yield* Effect.promise(() => {
        let jwt = new SignJWT({})
          .setProtectedHeader({ alg: SYMMETRIC_ALGORITHM, typ: "JWT" })
          .setSubject(user_id)
          .setIssuedAt()
          .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
        if (policy.issuer !== undefined) jwt = jwt.setIssuer(policy.issuer)
        if (policy.audience !== undefined) jwt = jwt.setAudience(policy.audience)
        return jwt.sign(key)
      })
    })
  })
}

/** The verification policy of the settings. */
export const policyOf = (
  settings: Pick<AgentwireSettings, "jwtIssuer" | "jwtAudience" | "jwtClockSkewSeconds" | "jwtJwksUrl">
): AuthJwtPolicy => ({
  issuer: Option.getOrUndefined(settings.jwtIssuer),
  audience: Option.getOrUndefined(settings.jwtAudience),
  clockSkewSeconds: settings.jwtClockSkewSeconds,
  jwksUrl: Option.getOrUndefined(settings.jwtJwksUrl)
})

/** Generates a random secret for a development process. */
export const generateSecret = (): Redacted.Redacted<string> =>
  Redacted.make(Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64url"))

/** `Auth` from `AgentwireConfig`. */
export const layer: Layer.Layer<Auth, MissingSecretError, AgentwireConfig> = Layer.effect(
  Auth,
  Effect.gen(function*() {
    const config = yield* AgentwireConfig
    const policy = policyOf(config)
    if (Option.isSome(config.jwtSecret)) return make(config.jwtSecret.value, policy)
    if (config.production && Option.isNone(config.jwtJwksUrl)) {
      return yield* new MissingSecretError({ variable: "AGENTWIRE_JWT_SECRET" })
    }
    return make(generateSecret(), policy)
  })
)
