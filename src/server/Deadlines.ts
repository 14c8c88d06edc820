/**
 * One timer for many deadlines: a binary min-heap of items, each holding its
 * own deadline and its place in the heap, and a single timer armed for the
 * earliest deadline.
 *
 * Used for the token expiry of every connection of a server: a Node `Timeout`
 * per connection costs about 0.2 KiB of heap (the `Timeout`, its share of a
 * `TimersList`, two boxed numbers); here an item costs one heap slot.
 *
 * An item is due once the clock reads at least its deadline. Items due at the
 * same time fire in the order of their deadlines (ties in any order). Firing is
 * synchronous, from the timer; `fire` may schedule or cancel items (itself
 * included). The timer is `unref`ed: deadlines never keep a process alive.
 *
 * @module
 */

/** What the queue keeps on an item: its deadline and its place in the heap (-1: not queued). */
export interface Item {
  /** Milliseconds on the queue's clock (`Clock.now`). */
  deadline: number
  /** Index in the heap, -1 when not queued. Owned by the queue. */
  slot: number
}

/** The clock and timer the queue uses (Node's by default; tests pass their own). */
export interface Clock {
  readonly now: () => number
  readonly setTimer: (callback: () => void, ms: number) => unknown
  readonly clearTimer: (timer: unknown) => void
}

/** Longest single timer (Node's timers overflow past 2^31-1 ms): a later deadline re-arms when it is reached. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * Node's wall clock, in milliseconds since `origin` (epoch ms), and unref'ed `setTimeout`s. With an origin near
 * now, deadlines stay small integers (V8 keeps them unboxed in an object's fields for 24 days).
 */
export const nodeClock = (origin = 0): Clock => ({
  now: () => Date.now() - origin,
  setTimer: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimer: (timer) => clearTimeout(timer as ReturnType<typeof setTimeout>)
})

/** A queue of items that `fire` once their deadline is reached (see the module's description). */
export class Deadlines<T extends Item> {
  private readonly heap: Array<T> = []
  private timer: unknown = undefined
  /** The deadline the timer is armed for (Infinity: not armed). */
  private armedFor = Infinity
  private firing = false
  private readonly onTimer = () => this.run()

  private readonly fire: (item: T) => void
  private readonly clock: Clock

  constructor(fire: (item: T) => void, clock: Clock = nodeClock()) {
    this.fire = fire
    this.clock = clock
  }

  /** Items queued. */
  get size(): number {
    return this.heap.length
  }

  /** Queues `item` for `deadline` (ms on the queue's clock), replacing its previous deadline if it was queued. */
  schedule(item: T, deadline: number): void {
    if (item.slot >= 0) this.remove(item)
    item.deadline = deadline
    item.slot = this.heap.length
    this.heap.push(item)
    this.up(item.slot)
    this.arm()
  }

  /** Takes `item` off the queue (nothing when it is not queued). */
  cancel(item: T): void {
    if (item.slot < 0) return
    this.remove(item)
    // an earlier timer finds nothing due and re-arms; only an empty queue drops it at once
    if (this.heap.length === 0 && !this.firing) this.disarm()
  }

  private arm(): void {
    if (this.firing) return
    const first = this.heap[0]
    if (first === undefined) return this.disarm()
    if (first.deadline >= this.armedFor) return
    this.disarm()
    this.armedFor = first.deadline
    const ms = Math.min(Math.max(0, first.deadline - this.clock.now()), MAX_TIMER_MS)
    this.timer = this.clock.setTimer(this.onTimer, ms)
  }

  private disarm(): void {
    if (this.timer !== undefined) this.clock.clearTimer(this.timer)
    this.timer = undefined
    this.armedFor = Infinity
  }

  private run(): void {
    this.timer = undefined
    this.armedFor = Infinity
    this.firing = true
    try {
      const now = this.clock.now()
      for (;;) {
        const first = this.heap[0]
        if (first === undefined || first.deadline > now) break
        this.remove(first)
        try {
          this.fire(first)
        } catch {
          // one item's failure must not strand the others
        }
      }
    } finally {
      this.firing = false
      this.arm()
    }
  }

  private remove(item: T): void {
    const at = item.slot
    const last = this.heap.pop()!
    item.slot = -1
    if (last === item) return
    this.heap[at] = last
    last.slot = at
    this.up(at)
    this.down(last.slot)
  }

  private up(at: number): void {
    const heap = this.heap
    const item = heap[at]!
    while (at > 0) {
      const parentAt = (at - 1) >> 1
      const parent = heap[parentAt]!
      if (parent.deadline <= item.deadline) break
      heap[at] = parent
      parent.slot = at
      at = parentAt
    }
    heap[at] = item
    item.slot = at
  }

  private down(at: number): void {
    const heap = this.heap
    const n = heap.length
    const item = heap[at]!
    for (;;) {
      let child = 2 * at + 1
      if (child >= n) break
      if (child + 1 < n && heap[child + 1]!.deadline < heap[child]!.deadline) child++
      const next = heap[child]!
      if (next.deadline >= item.deadline) break
      heap[at] = next
      next.slot = at
      at = child
    }
    heap[at] = item
    item.slot = at
  }
}
