/**
 * Prints a token for a user, signed with the server's configured secret, for
 * development and testing with several users:
 *
 *     AGENTWIRE_JWT_SECRET=... npm run token -- alice [--ttl 3600]
 *
 * The token is HS256, `sub` = the user id, `exp` = now + ttl (seconds,
 * default 3600, at most 30 days), and `iss`/`aud` from
 * `AGENTWIRE_JWT_ISSUER`/`AGENTWIRE_JWT_AUDIENCE` when set, so the server
 * started with the same environment accepts it. Only the token is printed,
 * to stdout, followed by a newline. Errors go to stderr and exit with 2
 * (usage, missing secret, invalid user id or ttl, bad configuration).
 *
 * @module
 */
import { Cause, Data, Effect, Exit, Option, Schema } from "effect"
import * as AgentwireConfig from "../src/layers/AgentwireConfig.ts"
import * as AuthJwt from "../src/layers/AuthJwt.ts"
import { Id } from "../src/protocol/Protocol.ts"

/** Exit code of every refusal. */
const USAGE_FAILURE = 2
/** Default `--ttl`, in seconds. */
const DEFAULT_TTL_SECONDS = 3600
/** Largest `--ttl`, in seconds. */
const MAX_TTL_SECONDS = 30 * 24 * 3600

const USAGE = "usage: npm run token -- <user_id> [--ttl <seconds>]"

class TokenScriptError extends Data.TaggedError("TokenScriptError")<{ readonly message: string }> {}

/** `<user_id> [--ttl <seconds>]` (also `--ttl=<seconds>`). */
const parseArgs = (args: ReadonlyArray<string>): { readonly user_id: string; readonly ttlSeconds: number } | string => {
  let user_id: string | undefined
  let ttlText: string | undefined
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === "--ttl") {
      ttlText = args[++i]
      if (ttlText === undefined) return `--ttl needs a number of seconds\n${USAGE}`
    } else if (arg.startsWith("--ttl=")) {
      ttlText = arg.slice("--ttl=".length)
    } else if (arg === "-h" || arg === "--help") {
      return USAGE
    } else if (arg.startsWith("-")) {
      return `unknown option ${JSON.stringify(arg)}\n${USAGE}`
    } else if (user_id === undefined) {
      user_id = arg
    } else {
      return `one user id only (got ${JSON.stringify(user_id)} and ${JSON.stringify(arg)})\n${USAGE}`
    }
  }
  if (user_id === undefined) return `missing user id\n${USAGE}`
  const text: string = user_id
  if (!Schema.is(Id)(user_id)) {
    return `invalid user id ${JSON.stringify(text.slice(0, 64))}: 1 to 128 characters from A-Z a-z 0-9 _ . : - and not a placeholder such as "null"`
  }
  const ttlSeconds = ttlText === undefined ? DEFAULT_TTL_SECONDS : Number(ttlText)
  if (ttlText !== undefined && (!/^\d+$/.test(ttlText) || ttlSeconds < 1 || ttlSeconds > MAX_TTL_SECONDS)) {
    return `--ttl must be an integer from 1 to ${MAX_TTL_SECONDS} seconds (got ${JSON.stringify(ttlText)})`
  }
  return { user_id, ttlSeconds }
}

const program = Effect.gen(function*() {
  const parsed = parseArgs(process.argv.slice(2))
  if (typeof parsed === "string") return yield* new TokenScriptError({ message: parsed })
  const settings = yield* AgentwireConfig.fromEnv
  if (Option.isNone(settings.jwtSecret)) {
    return yield* new TokenScriptError({
      message: "AGENTWIRE_JWT_SECRET is not set: start the server and this script with the same secret " +
        "(without one, the server generates its own and prints a demo token instead)"
    })
  }
  const auth = AuthJwt.make(settings.jwtSecret.value, AuthJwt.policyOf(settings))
  const token = yield* auth.issue(parsed.user_id, parsed.ttlSeconds)
  // the token must pass the server's own checks, or printing it helps nobody
  yield* auth.verify(token)
  yield* Effect.sync(() => process.stdout.write(`${token}\n`))
})

const exit = await Effect.runPromiseExit(program)
if (Exit.isFailure(exit)) {
  const failure = Cause.findErrorOption(exit.cause)
  process.stderr.write(`token: ${Option.isSome(failure) ? failure.value.message : Cause.pretty(exit.cause)}\n`)
  process.exitCode = USAGE_FAILURE
}
