/**
 * A token bucket: `ratePerSecond` tokens a second, at most `burst` held. Used
 * for the per-user run-start budget (refuse with `retry_after_ms`) and the
 * per-connection frame budget (wait). Pure and synchronous; the caller passes
 * the time (ms), so it runs on whichever clock the caller uses.
 *
 * @module
 */

export interface TokenBucket {
  /** Takes one token at `now`: 0 when taken, else the ms until one is available (nothing taken). */
  readonly take: (now: number) => number
  /** True when, at `now`, the bucket has refilled to `burst` (it carries no state worth keeping). */
  readonly isFull: (now: number) => boolean
}

/** A bucket that starts full at `now`. */
export const make = (ratePerSecond: number, burst: number, now: number): TokenBucket => {
  let tokens = burst
  let at = now
  const level = (t: number) => Math.min(burst, tokens + ((t - at) / 1000) * ratePerSecond)
  return {
    take: (t) => {
      tokens = level(t)
      at = t
      if (tokens >= 1) {
        tokens -= 1
        return 0
      }
      return Math.ceil(((1 - tokens) / ratePerSecond) * 1000)
    },
    isFull: (t) => level(t) >= burst
  }
}
