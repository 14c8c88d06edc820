/**
 * The raw baseline's run loop: one `ticker` run as a hand-written server would
 * emit it (the same events and shapes as agentwire's `ticker`), paced with
 * `setTimeout`. Shared by the baseline server and the in-process benches so that
 * every baseline figure measures the same loop.
 */

const newId = (prefix: string) => `${prefix}_${crypto.randomUUID().replaceAll("-", "")}`

const setting = (request: string, name: string, fallback: number) => {
  const match = new RegExp(`\\b${name}\\s*=\\s*(\\d+)`).exec(request)
  return match === null ? fallback : Number(match[1])
}

/**
 * Runs `steps=N interval_ms=M` of `request` for `user_id`, handing each event
 * to `deliver` (which encodes and sends it), then calls `onDone`.
 */
export const tickerRun = (
  user_id: string,
  request: string,
  request_id: string | undefined,
  deliver: (event: object) => void,
  onDone: () => void = () => {}
): void => {
  const steps = setting(request, "steps", 10)
  const interval = setting(request, "interval_ms", 100)
  const run_id = newId("run")
  const thread_id = newId("thread")
  const startedAt = performance.now()
  let seq = 0
  const stamp = () => {
    seq++
    return {
      event_id: `${run_id}:${seq}`,
      run_id,
      thread_id,
      user_id,
      agent_name: "ticker",
      depth: 0,
      seq,
      timestamp: new Date().toISOString()
    }
  }
  deliver({ type: "agent_started", task_description: request, request_id: request_id ?? newId("req"), ...stamp() })
  const think = (step: number) => deliver({ type: "agent_thinking", reasoning: `tick ${step} of ${steps}`, step_number: step, ...stamp() })
  const complete = () => {
    deliver({
      type: "agent_completed",
      status: "completed",
      final_response: `ticked ${steps} times`,
      duration_ms: Math.round((performance.now() - startedAt) * 1000) / 1000,
      ...stamp()
    })
    onDone()
  }
  if (interval === 0) {
    for (let step = 1; step <= steps; step++) think(step)
    return complete()
  }
  let step = 1
  const next = () => {
    think(step)
    if (step++ < steps) setTimeout(next, interval)
    else complete()
  }
  if (steps === 0) complete()
  else next()
}
