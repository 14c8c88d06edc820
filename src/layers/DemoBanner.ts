/**
 * Prints a ready-to-use demo token and URL when the process generated its own
 * secret (no `AGENTWIRE_JWT_SECRET`, not production), as Jupyter does.
 *
 * Printed to stdout once, not through the logger: log lines never carry tokens.
 *
 * @module
 */
import { Console, Effect, Layer, Option } from "effect"
import { AgentwireConfig } from "../services/AgentwireConfig.ts"
import { AgentwireServer } from "../services/AgentwireServer.ts"
import { Auth } from "../services/Auth.ts"

/** User id of the demo token. */
export const DEMO_USER = "demo-user"
/** Lifetime of the demo token. */
export const DEMO_TTL_SECONDS = 12 * 60 * 60

export const layer: Layer.Layer<never, never, AgentwireConfig | AgentwireServer | Auth> = Layer.effectDiscard(
  Effect.gen(function*() {
    const config = yield* AgentwireConfig
    if (Option.isSome(config.jwtSecret) || config.production) return
    const server = yield* AgentwireServer
    const token = yield* (yield* Auth).issue(DEMO_USER, DEMO_TTL_SECONDS)
    const ws = server.url.replace(/^http/, "ws")
    yield* Console.log(
      [
        "",
        "  No AGENTWIRE_JWT_SECRET set: generated a secret for this process (development only).",
        `  Demo token for user "${DEMO_USER}", valid 12 hours:`,
        `    ${token}`,
        "  Open the web page (the token travels in the URL fragment, never to the server's logs):",
        `    ${server.url}/#token=${token}`,
        "  Connect:",
        `    ${ws}/ws?token=${token}`,
        `  Start a run over HTTP:`,
        `    curl -H 'Authorization: Bearer ${token}' -H 'Content-Type: application/json' -d '{"agent":"calculator","user_request":"2+3*4"}' ${server.url}/api/runs`,
        ""
      ].join("\n")
    )
  })
)
