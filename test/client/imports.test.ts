/**
 * agentwire/client must run in browsers: its import graph may reach only the
 * protocol module and `effect`, never server code or `node:` modules.
 */
import { readFileSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..")

const graph = (entry: string) => {
  const files = new Set<string>()
  const bare = new Set<string>()
  const visit = (file: string) => {
    if (files.has(file)) return
    files.add(file)
    const text = readFileSync(file, "utf8")
    for (const m of text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+"([^"]+)"/gm)) {
      const spec = m[1]!
      if (spec.startsWith(".")) visit(resolve(dirname(file), spec))
      else bare.add(spec)
    }
  }
  visit(resolve(root, entry))
  return { files: [...files].map((f) => f.slice(root.length + 1)).sort(), bare: [...bare].sort() }
}

describe("agentwire/client import graph", () => {
  it("reaches only src/client, the protocol module and effect", () => {
    const { bare, files } = graph("src/client/index.ts")
    expect(files).toEqual(["src/client/AgentwireClient.ts", "src/client/Effect.ts", "src/client/index.ts", "src/protocol/Protocol.ts"])
    expect(bare).toEqual(["effect"])
  })

  it("the page reaches only the client and the protocol module", () => {
    const { bare, files } = graph("src/web/app.ts")
    expect(files).toEqual(["src/client/AgentwireClient.ts", "src/protocol/Protocol.ts", "src/web/app.ts"])
    expect(bare).toEqual(["effect"])
  })
})
