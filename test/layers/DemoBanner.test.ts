import { describe, expect, it } from "@effect/vitest"
import { Console, Effect, Layer, Option, Redacted } from "effect"
import type { AgentwireSettings } from "../../src/services/AgentwireConfig.ts"
import * as AgentwireConfig from "../../src/layers/AgentwireConfig.ts"
import * as AuthJwt from "../../src/layers/AuthJwt.ts"
import * as DemoBanner from "../../src/layers/DemoBanner.ts"
import { AgentwireServer } from "../../src/services/AgentwireServer.ts"

/** What the banner layer prints to the console for these settings. */
const printed = (settings: Partial<AgentwireSettings>) =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    const capture: Console.Console = { ...globalThis.console, log: (...args: ReadonlyArray<unknown>) => lines.push(args.join(" ")) }
    const config = AgentwireConfig.layer(settings)
    const server = Layer.succeed(AgentwireServer, { host: "127.0.0.1", port: 1, url: "http://127.0.0.1:1" })
    yield* Layer.build(DemoBanner.layer.pipe(Layer.provide([config, server, AuthJwt.layer.pipe(Layer.provide(config))]))).pipe(
      Effect.provideService(Console.Console, capture)
    )
    return lines.join("\n")
  })

describe("DemoBanner", () => {
  it.effect("prints a demo token when the process generated its secret (development)", () =>
    Effect.gen(function*() {
      expect(yield* printed({})).toMatch(/Demo token for user "demo-user"/)
    }))

  it.effect("prints nothing with a configured secret, nor in production with only a JWKS URL", () =>
    Effect.gen(function*() {
      expect(yield* printed({ jwtSecret: Option.some(Redacted.make("s".repeat(32))) })).toBe("")
      expect(yield* printed({ production: true, jwtJwksUrl: Option.some("https://idp.example.com/jwks") })).toBe("")
    }))
})
