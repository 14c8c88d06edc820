/** The per-run record of sent seqs: a property against a plain Set, and the reviewer's gap case. */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "fast-check"
import * as SentSeqs from "../../src/server/SentSeqs.ts"

describe("SentSeqs", () => {
  it("a resume that jumps ahead while an earlier one is behind leaves the skipped seqs unsent (the review's 22529..29000 gap)", () => {
    const sent = SentSeqs.make()
    for (let seq = 1; seq <= 22528; seq++) sent.add(seq)
    for (let seq = 29001; seq <= 29100; seq++) sent.add(seq)
    expect(sent.has(22529)).toBe(false)
    expect(sent.has(29000)).toBe(false)
    expect(sent.toArray()).toEqual([[1, 22528], [29001, 29100]])
    for (let seq = 22529; seq <= 29000; seq++) sent.add(seq)
    expect(sent.toArray()).toEqual([[1, 29100]])
  })

  it("property: has() answers as a Set of the added seqs would, and ranges stay disjoint, sorted and merged", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 200 }), { maxLength: 400 }), (seqs) => {
        const sent = SentSeqs.make()
        const model = new Set<number>()
        for (const seq of seqs) {
          sent.add(seq)
          model.add(seq)
        }
        for (let seq = 0; seq <= 201; seq++) expect(sent.has(seq)).toBe(model.has(seq))
        const ranges = sent.toArray()
        for (let i = 1; i < ranges.length; i++) expect(ranges[i]![0]).toBeGreaterThan(ranges[i - 1]![1] + 1)
        expect(ranges.reduce((n, [lo, hi]) => n + hi - lo + 1, 0)).toBe(model.size)
      }),
      // a failure prints its seed and path; keep such an input as a test above
      { numRuns: 500, verbose: 1 }
    )
  })

  it("property: claim() answers !has() then adds, in order (the live fast path) or not, mixed with add()", () => {
    fc.assert(
      fc.property(
        // "next" is live delivery: one above the highest seq so far
        fc.array(fc.tuple(fc.oneof(fc.integer({ min: 1, max: 120 }), fc.constant("next" as const)), fc.boolean()), { maxLength: 300 }),
        (ops) => {
          const sent = SentSeqs.make()
          const model = new Set<number>()
          let highest = 0
          for (const [op, viaClaim] of ops) {
            const seq = op === "next" ? highest + 1 : op
            highest = Math.max(highest, seq)
            if (viaClaim) expect(sent.claim(seq)).toBe(!model.has(seq))
            else sent.add(seq)
            model.add(seq)
          }
          for (let seq = 0; seq <= highest + 1; seq++) expect(sent.has(seq)).toBe(model.has(seq))
          const ranges = sent.toArray()
          for (let i = 1; i < ranges.length; i++) expect(ranges[i]![0]).toBeGreaterThan(ranges[i - 1]![1] + 1)
          expect(ranges.reduce((n, [lo, hi]) => n + hi - lo + 1, 0)).toBe(model.size)
        }
      ),
      { numRuns: 500, verbose: 1 }
    )
  })
})
