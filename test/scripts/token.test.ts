/**
 * `npm run token -- <user_id> [--ttl <seconds>]` as a child process (Node 24,
 * like the npm script): the printed token passes the server's Auth; every
 * refusal is one line on stderr and exit code 2.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import * as AuthJwt from "../../src/layers/AuthJwt.ts"

const SCRIPT = fileURLToPath(new URL("../../scripts/token.ts", import.meta.url))
const SECRET = "token-script-secret-0123456789abcdef"

const run = (args: ReadonlyArray<string>, env: Record<string, string>) =>
  Effect.callback<{ code: number | null; stdout: string; stderr: string }>((resume) => {
    const child = spawn(process.execPath, [SCRIPT, ...args], {
      env: { PATH: process.env.PATH ?? "", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
  })

describe("scripts/token.ts", () => {
  it.live("prints a token for the user that the server's Auth accepts (default ttl 1 hour)", () =>
    Effect.gen(function*() {
      const result = yield* run(["alice"], { AGENTWIRE_JWT_SECRET: SECRET })
      expect(result).toMatchObject({ code: 0, stderr: "" })
      expect(result.stdout).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+\n$/)
      const verified = yield* AuthJwt.make(Redacted.make(SECRET)).verify(result.stdout.trim())
      expect(verified.user_id).toBe("alice")
      expect(verified.expires_at).toBeGreaterThan(Date.now() + 3_500_000)
      expect(verified.expires_at).toBeLessThanOrEqual(Date.now() + 3_600_000)
    }))

  it.live("honours --ttl and sets iss/aud from the environment", () =>
    Effect.gen(function*() {
      const env = { AGENTWIRE_JWT_SECRET: SECRET, AGENTWIRE_JWT_ISSUER: "dev-issuer", AGENTWIRE_JWT_AUDIENCE: "agentwire" }
      const result = yield* run(["bob", "--ttl", "60"], env)
      expect(result.code).toBe(0)
      const strict = AuthJwt.make(Redacted.make(SECRET), { issuer: "dev-issuer", audience: "agentwire" })
      const verified = yield* strict.verify(result.stdout.trim())
      expect(verified.user_id).toBe("bob")
      expect(verified.expires_at).toBeLessThanOrEqual(Date.now() + 60_000)
      expect(verified.expires_at).toBeGreaterThan(Date.now() + 50_000)
    }))

  const refusals: ReadonlyArray<[string, ReadonlyArray<string>, Record<string, string>, RegExp]> = [
    ["no secret", ["alice"], {}, /^token: AGENTWIRE_JWT_SECRET is not set/],
    ["an invalid user id", ["al ice"], { AGENTWIRE_JWT_SECRET: SECRET }, /^token: invalid user id "al ice"/],
    ["a placeholder user id", ["undefined"], { AGENTWIRE_JWT_SECRET: SECRET }, /^token: invalid user id "undefined"/],
    ["no user id", [], { AGENTWIRE_JWT_SECRET: SECRET }, /^token: missing user id\nusage: npm run token/],
    ["a bad ttl", ["alice", "--ttl", "1h"], { AGENTWIRE_JWT_SECRET: SECRET }, /^token: --ttl must be an integer/],
    ["a zero ttl", ["alice", "--ttl=0"], { AGENTWIRE_JWT_SECRET: SECRET }, /^token: --ttl must be an integer/],
    ["a short secret", ["alice"], { AGENTWIRE_JWT_SECRET: "short" }, /^token: AGENTWIRE_JWT_SECRET must be at least 32/]
  ]
  for (const [label, args, env, pattern] of refusals) {
    it.live(`exits 2 with one clear line for ${label}, printing no token`, () =>
      Effect.gen(function*() {
        const result = yield* run(args, env)
        expect(result.code).toBe(2)
        expect(result.stdout).toBe("")
        expect(result.stderr).toMatch(pattern)
        // the secret is never echoed
        if (env.AGENTWIRE_JWT_SECRET !== undefined) expect(result.stderr).not.toContain(env.AGENTWIRE_JWT_SECRET)
      }))
  }
})
