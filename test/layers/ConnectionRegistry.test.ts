import { describe, expect, it } from "@effect/vitest"
import * as ConnectionRegistry from "../../src/layers/ConnectionRegistry.ts"
import { thinking, watchedConnection } from "../fixtures/events.ts"

describe("ConnectionRegistry", () => {
  it("counts registrations: the same connection added twice and removed once is still registered once, and counted so", () => {
    const registry = ConnectionRegistry.make()
    const tab = watchedConnection("c1", "alice")
    const other = watchedConnection("c2", "alice")
    registry.add(tab.connection)
    registry.add(other.connection)
    registry.add(tab.connection)
    registry.remove(tab.connection)
    expect(registry.count("alice")).toBe(2)
    expect(registry.count()).toBe(2)
    expect(registry.has("alice")).toBe(true)
    registry.deliver(thinking("alice", 1), JSON.stringify(thinking("alice", 1)))
    expect(tab.frames.map((e) => e.seq)).toEqual([1])
    expect(other.frames.map((e) => e.seq)).toEqual([1])
    registry.remove(tab.connection)
    registry.remove(other.connection)
    expect(registry.count("alice")).toBe(0)
    expect(registry.count()).toBe(0)
    expect(registry.has("alice")).toBe(false)
  })
})
