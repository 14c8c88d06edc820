/**
 * docs/protocol.schema.json is generated from src/protocol/Protocol.ts; this
 * fails when someone changed the Schema module and forgot `npm run schema`.
 */
import { readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { CLIENT_MESSAGE_TYPES } from "../../src/protocol/Protocol.ts"
import { render, SCHEMA_PATH } from "../../scripts/protocol-schema.ts"

describe("docs/protocol.schema.json", () => {
  it("is what `npm run schema` generates from the Schema module now", () => {
    expect(readFileSync(SCHEMA_PATH, "utf8"), "docs/protocol.schema.json is stale: run `npm run schema`").toBe(render())
  })

  it("names every client message type and every server frame type", () => {
    const text = render()
    const document = JSON.parse(text) as { $defs: Record<string, unknown> }
    expect(Object.keys(document.$defs)).toEqual(expect.arrayContaining(["ClientMessage", "ServerMessage"]))
    const types = [
      ...CLIENT_MESSAGE_TYPES,
      "connection_established", "pong", "authenticated", "run_accepted", "run_stopped", "run_resumed", "runs", "error",
      "agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_error", "agent_completed", "partial_result", "agent_stopped"
    ]
    for (const type of types) expect(text, type).toMatch(new RegExp(`"enum": \\[\\s*"${type}"\\s*\\]`))
  })
})
