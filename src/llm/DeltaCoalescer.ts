/**
 * Coalesces streamed text deltas: at most one `send` every `intervalMs`.
 *
 * Leading edge: a delta arriving when nothing was sent for `intervalMs` goes
 * out at once (no added latency for a slow stream). Deltas arriving sooner are
 * buffered and sent together, in order, when the interval has passed (by a
 * timer fiber in the surrounding scope) or when `flush` is called (end of the
 * message). `intervalMs` 0 sends every delta as it comes. The concatenation of
 * everything sent is always exactly the concatenation of everything pushed.
 * Time is read from Effect's monotonic `Clock` (so `TestClock` drives it in tests).
 *
 * @module
 */
import { Clock, Effect, Fiber, type Scope, Semaphore } from "effect"

export interface DeltaCoalescer {
  /** Adds a delta; sends now or within `intervalMs`. Empty deltas are ignored. */
  readonly push: (delta: string) => Effect.Effect<void>
  /** Sends what is buffered now (call at the end of a message). */
  readonly flush: Effect.Effect<void>
}

/** A coalescer over `send`; its timer lives in the surrounding scope. */
export const make = (
  intervalMs: number,
  send: (text: string) => Effect.Effect<void>
): Effect.Effect<DeltaCoalescer, never, Scope.Scope> =>
  Effect.gen(function*() {
    if (intervalMs <= 0) {
      return { push: (delta) => (delta === "" ? Effect.void : send(delta)), flush: Effect.void }
    }
    const scope = yield* Effect.scope
    const clock = yield* Clock.Clock
    const nowMs = () => Number(clock.monotonicTimeNanosUnsafe()) / 1e6
    // one sender at a time: the buffer is taken and sent as one step, so order is kept
    const lock = yield* Semaphore.make(1)
    let buffer = ""
    let lastSent = Number.NEGATIVE_INFINITY
    let timer: Fiber.Fiber<void> | undefined

    const sendBuffered = Effect.suspend(() => {
      timer = undefined
      if (buffer === "") return Effect.void
      const text = buffer
      buffer = ""
      lastSent = nowMs()
      return send(text)
    })

    const push = (delta: string): Effect.Effect<void> =>
      delta === ""
        ? Effect.void
        : lock.withPermits(1)(Effect.suspend(() => {
          const now = nowMs()
          if (timer === undefined && now - lastSent >= intervalMs) {
            lastSent = now
            const text = buffer + delta
            buffer = ""
            return send(text)
          }
          buffer += delta
          if (timer !== undefined) return Effect.void
          const wait = Math.max(0, lastSent + intervalMs - now)
          return Effect.sleep(wait).pipe(
            Effect.andThen(lock.withPermits(1)(sendBuffered)),
            Effect.forkIn(scope),
            Effect.map((fiber) => void (timer = fiber))
          )
        }))

    const flush = lock.withPermits(1)(Effect.suspend(() => {
      const pending = timer
      timer = undefined
      return (pending === undefined ? Effect.void : Fiber.interrupt(pending)).pipe(Effect.andThen(sendBuffered))
    }))

    return { push, flush }
  })
