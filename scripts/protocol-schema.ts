/**
 * Generates docs/protocol.schema.json (JSON Schema 2020-12) from the wire
 * Schema module, for clients in other languages: `npm run schema`.
 * test/scripts/protocol-schema.test.ts fails when the file is stale.
 *
 * Generation is Effect's (`Schema.toJsonSchemaDocument`), best-effort: a few
 * checks have no JSON Schema form (the id rule that refuses placeholders such
 * as `none`), so the JSON Schema is at most as strict as the server.
 *
 * @module
 */
import { writeFileSync } from "node:fs"
import { Schema } from "effect"
import { ClientMessage, PROTOCOL_VERSION, ServerMessage } from "../src/protocol/Protocol.ts"

export const SCHEMA_PATH = new URL("../docs/protocol.schema.json", import.meta.url)

/** The schema document as the file holds it (stable key order, trailing newline). */
export const render = (): string => {
  const client = Schema.toJsonSchemaDocument(ClientMessage)
  const server = Schema.toJsonSchemaDocument(ServerMessage)
  const document = {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    title: `agentwire wire protocol v${PROTOCOL_VERSION}`,
    description:
      "Every JSON text frame of GET /ws. ClientMessage: what a client sends; ServerMessage: what the server sends. " +
      "Generated from src/protocol/Protocol.ts by `npm run schema`; do not edit. v1 grows only by addition: " +
      "a client must ignore frame types, fields and values it does not know (see docs/protocol.md).",
    $defs: {
      ...client.definitions,
      ...server.definitions,
      ClientMessage: client.schema,
      ServerMessage: server.schema
    },
    anyOf: [{ $ref: "#/$defs/ClientMessage" }, { $ref: "#/$defs/ServerMessage" }]
  }
  return `${JSON.stringify(document, null, 2)}\n`
}

if (import.meta.main) {
  writeFileSync(SCHEMA_PATH, render())
  console.log(`wrote ${SCHEMA_PATH.pathname}`)
}
