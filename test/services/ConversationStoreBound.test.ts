/** `boundThread` and `cutText`: a thread answer stays within its byte bound, newest first, never splitting a surrogate pair. */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import { boundThread, cutText, type StoredMessage, type ThreadDetail, titleOf } from "../../src/services/ConversationStore.ts"

const thread = (messages: ReadonlyArray<StoredMessage>): ThreadDetail => ({ thread_id: "t", title: "", created_at: 0, updated_at: 0, messages, runs: [] })

describe("boundThread", () => {
  it("cutText never leaves half a surrogate pair", () => {
    expect(cutText("ab😀", 3)).toBe("ab")
    expect(cutText("ab😀", 4)).toBe("ab😀")
    expect(cutText("abc", 2)).toBe("ab")
  })

  it("keeps the newest messages within the bound; the newest is always kept; truncated says when anything was left out or cut (property)", () =>
    fc.assert(
      fc.property(
        fc.array(fc.record({ text: fc.string({ unit: "binary", maxLength: 40 }), repeat: fc.integer({ min: 1, max: 3000 }) }), { minLength: 1, maxLength: 30 }),
        fc.integer({ min: 1000, max: 100_000 }),
        (parts, maxBytes) => {
          const messages = parts.map((p, i): StoredMessage => ({ role: "user", content: p.text.repeat(p.repeat), created_at: i }))
          const bounded = boundThread(thread(messages), maxBytes)
          const kept = bounded.messages
          expect(kept.length).toBeGreaterThan(0)
          expect(kept.at(-1)!.created_at).toBe(messages.length - 1)
          // the newest ones, in order
          expect(kept.map((m) => m.created_at)).toEqual(messages.slice(messages.length - kept.length).map((m) => m.created_at))
          const bytes = kept.reduce((sum, m) => sum + Buffer.byteLength(m.content) + 100, 0)
          if (kept.length > 1) expect(bytes).toBeLessThanOrEqual(Math.floor(maxBytes * 3 / 4))
          for (const m of kept) expect(/[\uD800-\uDBFF]$/.test(m.content) && m.truncated === true).toBe(false)
          const lost = kept.length < messages.length || kept.some((m) => m.truncated === true)
          expect(bounded.truncated === true).toBe(lost)
        }
      )
    ))
})

describe("titleOf", () => {
  it("the first line, whatever ends it, trimmed; cut with … never inside a surrogate pair", () => {
    expect(titleOf("line one\r\nline two")).toBe("line one")
    expect(titleOf("  old mac\rsecond")).toBe("old mac")
    expect(titleOf("first \nsecond")).toBe("first")
    const pair = titleOf("a".repeat(118) + "😀tail")
    expect(pair).toBe("a".repeat(118) + "…")
    expect(titleOf("a".repeat(117) + "😀😀tail")).toBe("a".repeat(117) + "😀…")
    expect(titleOf("a".repeat(120))).toBe("a".repeat(120))
  })
})
