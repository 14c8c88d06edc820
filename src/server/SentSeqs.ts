/**
 * Which `seq`s of one run a connection already sent: a short list of disjoint,
 * sorted ranges. Live delivery adds at the top (one range, extended in place);
 * a resume that fills a gap below adds a range under it, and ranges merge when
 * they touch. A connection checks every event of the run against it, so that
 * each event reaches the connection at most once, however resumes and live
 * delivery interleave.
 *
 * @module
 */

/** Ranges one run may have before a resume that would split it further is refused. */
export const MAX_RANGES = 64

export interface SentSeqs {
  /** True when `seq` was sent. */
  readonly has: (seq: number) => boolean
  /** Records `seq` as sent. */
  readonly add: (seq: number) => void
  /**
   * Records `seq` as sent and answers true, or answers false when it already
   * was: `!has(seq)` then `add(seq)` in one step. The next `seq` of live
   * delivery (one above the top range) extends that range without a search.
   */
  readonly claim: (seq: number) => boolean
  /** The number of disjoint ranges held. */
  readonly ranges: () => number
  /** The ranges, lowest first, as `[low, high]` (inclusive); for tests and logs. */
  readonly toArray: () => ReadonlyArray<readonly [number, number]>
}

/** An empty set. */
export const make = (): SentSeqs => {
  // lows[i]..highs[i], sorted, disjoint and not adjacent
  const lows: Array<number> = []
  const highs: Array<number> = []

  /** Index of the last range whose low is <= seq, or -1. */
  const floor = (seq: number): number => {
    // the common case: at or above the top range
    const top = lows.length - 1
    if (top < 0 || seq >= lows[top]!) return top
    let lo = 0
    let hi = top
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (lows[mid]! <= seq) lo = mid
      else hi = mid - 1
    }
    return lows[lo]! <= seq ? lo : -1
  }

  const has = (seq: number): boolean => {
    const i = floor(seq)
    return i >= 0 && seq <= highs[i]!
  }

  const add = (seq: number): void => {
    const i = floor(seq)
    if (i >= 0 && seq <= highs[i]!) return
    const joinsBelow = i >= 0 && highs[i]! === seq - 1
    const joinsAbove = i + 1 < lows.length && lows[i + 1]! === seq + 1
    if (joinsBelow && joinsAbove) {
      highs[i] = highs[i + 1]!
      lows.splice(i + 1, 1)
      highs.splice(i + 1, 1)
    } else if (joinsBelow) {
      highs[i] = seq
    } else if (joinsAbove) {
      lows[i + 1] = seq
    } else {
      lows.splice(i + 1, 0, seq)
      highs.splice(i + 1, 0, seq)
    }
  }

  const claim = (seq: number): boolean => {
    const top = highs.length - 1
    // in-order live delivery: nothing lies above the top range, so it grows by one
    if (top >= 0 && seq === highs[top]! + 1) {
      highs[top] = seq
      return true
    }
    if (has(seq)) return false
    add(seq)
    return true
  }

  return {
    has,
    add,
    claim,
    ranges: () => lows.length,
    toArray: () => lows.map((low, i) => [low, highs[i]!] as const)
  }
}
