/**
 * The shared store suite against the in-memory layer and SQLite (a temp file).
 * PostgreSQL: `ConversationStorePg.test.ts`.
 */
import { describe } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as ConversationStoreMemory from "../../src/layers/ConversationStoreMemory.ts"
import * as ConversationStoreSql from "../../src/layers/ConversationStoreSql.ts"
import * as SqliteClient from "../../src/layers/SqliteClient.ts"
import { SqlClient } from "effect/sql"
import { storeSuite } from "../fixtures/store-suite.ts"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "agentwire-store-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

describe("ConversationStore", () => {
  storeSuite("memory", (clock) => ConversationStoreMemory.make({ now: clock.now }))

  storeSuite("sqlite", (clock) =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const sql = yield* SqliteClient.make(join(dir, "history.db"))
      return yield* Effect.andThen(ConversationStoreSql.migrate(), ConversationStoreSql.make({ now: clock.now, backend: "sqlite" })).pipe(
        Effect.provideService(SqlClient.SqlClient, sql)
      )
    }))
})
