/**
 * `echo`: answers with the request itself. Useful to see the event flow.
 *
 * @module
 */
import { Effect } from "effect"
import * as Agent from "../services/Agent.ts"

export const echo = Agent.make("echo", {
  description: "Answers with the request itself",
  run: (request, ctx) => Effect.as(ctx.think("Echoing the request"), request)
})
