/**
 * The agentwire web page: sign in with a token, chat with an agent, watch each
 * run live as a tree (agents by depth, thinking, tool calls with parameters,
 * results, status and duration), stop it, and see the connection's true state.
 *
 * Plain DOM and the `agentwire/client` library (served as ES modules by
 * `src/server/WebPage.ts`); no UI library. All text from the server is set
 * with `textContent`, never parsed as HTML.
 *
 * @module
 */
import {
  type AgentEvent,
  type Client,
  ClientClosedError,
  CommandError,
  connect,
  type ConnectionState,
  type Run,
  type RunInfo,
  RunLostError,
  type Thread
} from "../client/AgentwireClient.ts"

const TOKEN_KEY = "agentwire.token"
/** Events a turn holds for the next animation frame; past it they render at once (a hidden tab gets no frames). */
const MAX_QUEUED_EVENTS = 256

// ---- tiny DOM helpers --------------------------------------------------------

type Attrs = Record<string, string | boolean | undefined>
const h = (tag: string, attrs: Attrs = {}, ...children: Array<Node | string | undefined>): HTMLElement => {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue
    el.setAttribute(k, v === true ? "" : v)
  }
  for (const child of children) if (child !== undefined) el.append(child)
  return el
}
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T

const randomId = (prefix: string) => {
  const bytes = new Uint8Array(8)
  crypto.getRandomValues(bytes)
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`
}

const formatMs = (ms: number) => (ms < 1000 ? `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`)
const json = (value: unknown) => {
  const text = typeof value === "string" ? value : JSON.stringify(value)
  return text.length > 400 ? `${text.slice(0, 400)}…` : text
}

// ---- errors in plain words ---------------------------------------------------

const plainCommandError = (error: unknown): string => {
  if (error instanceof CommandError) {
    switch (error.code) {
      case "UNKNOWN_AGENT":
        return `There is no agent by that name. ${error.message}`
      case "RATE_LIMITED":
        return `You are starting runs too quickly. Try again in ${Math.ceil((error.retryAfterMs ?? 1000) / 1000)} s.`
      case "RUN_LIMIT_EXCEEDED":
        return "You already have the most runs in flight that you may have. Stop one, or wait for one to finish."
      case "SERVER_BUSY":
        return "The server is at capacity right now. Try again in a few seconds."
      case "SHUTTING_DOWN":
        return "The server is restarting and accepts no new runs. Try again in a moment."
      case "INVALID_MESSAGE":
        return `The server could not accept that request: ${error.message}`
      case "CONNECTION_LOST":
        return "The connection dropped before the server answered. Try again."
      case "MESSAGE_TOO_LARGE":
        return "That message is too long for the server to accept. Shorten it and send again; your text is still in the box."
      case "OUTCOME_UNKNOWN":
        return "The server restarted before it confirmed your request, so it may or may not have run. Your text is back in the box: press Send to ask again."
      case "LOG_UNAVAILABLE":
        return "The server's run log is unreachable right now. Try again in a moment."
      case "HISTORY_UNAVAILABLE":
        return "The server's chat history is unavailable right now. Try again in a moment."
      case "THREAD_NOT_FOUND":
        return "This chat no longer exists on the server. Start a new chat."
      default:
        return `The server refused: ${error.message} (${error.code})`
    }
  }
  if (error instanceof ClientClosedError) {
    return error.reason === "replaced"
      ? "This page was disconnected because you opened agentwire in too many other tabs or windows. Press Reconnect to continue here."
      : error.reason === "auth_failed"
      ? "Your sign-in has expired. Sign in again."
      : "The connection is closed."
  }
  if (error instanceof RunLostError) {
    return error.reason === "server_restarted"
      ? "The server restarted while this run was going; the rest of it is lost."
      : error.reason === "expired"
      ? "This run is too old: the server no longer keeps its events."
      : error.reason === "not_found"
      ? "The server does not know this run (it may have restarted)."
      : error.reason === "replaced"
      ? "Disconnected (opened in too many other tabs); this run may still be going. Reconnect to see it."
      : error.reason === "auth_failed"
      ? "Your sign-in expired; sign in again to see this run."
      : error.reason === "refused"
      ? `The server would not send this run: ${error.message}`
      : "Stopped following this run."
  }
  return error instanceof Error ? error.message : String(error)
}

const plainAgentError = (code: string, message: string): string => {
  const what: Record<string, string> = {
    TOOL_FAILED: "A tool failed",
    TOOL_TIMEOUT: "A tool took too long",
    SUBAGENT_FAILED: "A helper agent failed",
    UNKNOWN_AGENT: "It asked for an agent that does not exist",
    MAX_DEPTH: "It delegated too deeply",
    RUN_TIMEOUT: "The run took longer than allowed",
    INTERNAL: "The agent crashed",
    LLM_AUTH: "The language model refused the server's credentials",
    LLM_RATE_LIMITED: "The language model is rate limiting us",
    LLM_UNAVAILABLE: "The language model could not be reached",
    LLM_TIMEOUT: "The language model stopped answering",
    LLM_BAD_RESPONSE: "The language model sent something unusable",
    LLM_CONTEXT_TOO_LONG: "The conversation is too long for the model",
    LLM_MAX_STEPS: "The model kept calling tools without answering",
    EVENT_LIMIT: "The run produced too many events",
    LOG_FULL: "The server's run log is full",
    LOG_UNAVAILABLE: "The server's run log is unreachable",
    INVALID_INPUT: "The request was not understood"
  }
  return `${what[code] ?? "Something went wrong"}: ${message}`
}

// ---- sign-in -------------------------------------------------------------------

const tokenFromHash = (): string | undefined => {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash)
  if (match === null) return undefined
  // keep it out of the address bar, history and screenshots
  history.replaceState(null, "", location.pathname + location.search)
  return decodeURIComponent(match[1]!)
}

const signIn = (why?: string) => {
  const app = $("app")
  app.replaceChildren(
    h(
      "main",
      { class: "signin" },
      h("h1", {}, "agentwire"),
      why === undefined ? undefined : h("p", { id: "signin-reason", class: "notice", role: "alert" }, why),
      h("p", {}, "Paste a token to sign in. `npm start` prints a page link that carries the development token."),
      h(
        "form",
        { id: "signin-form" },
        h("label", { for: "token-input" }, "Token"),
        h("textarea", { id: "token-input", rows: "4", required: true, autocomplete: "off", spellcheck: "false" }),
        h("button", { type: "submit" }, "Sign in")
      )
    )
  )
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault()
    const token = ($("token-input") as HTMLTextAreaElement).value.trim()
    if (token.length === 0) return
    sessionStorage.setItem(TOKEN_KEY, token)
    start(token)
  })
  $("token-input").focus()
}

// ---- the app ---------------------------------------------------------------------

interface Turn {
  readonly run_id: string
  /** The live run, or undefined for a turn shown from history only (its events are no longer retained). */
  readonly run: Run | undefined
  readonly el: HTMLElement
  readonly answer: HTMLElement
  readonly status: HTMLElement
  readonly timeline: HTMLElement
  /** Message texts of partial_result deltas, by message_id. */
  readonly messages: Map<string, string>
  /** Events delivered and not rendered yet (rendered once per animation frame). */
  readonly queue: Array<AgentEvent>
  ended: boolean
}

const start = (token: string) => {
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`
  const client: Client = connect({ url: wsUrl, token })
  const states: Array<string> = []
  ;(window as unknown as { agentwire: unknown }).agentwire = { client, states }

  const app = $("app")
  app.replaceChildren(
    h(
      "header",
      { class: "top" },
      h("h1", {}, "agentwire"),
      h("span", { id: "conn", class: "conn", role: "status", "aria-live": "polite", "data-status": "connecting" }, "Connecting…"),
      h("button", { id: "retry", type: "button", hidden: true }, "Reconnect now"),
      h("button", { id: "signout", type: "button", class: "quiet" }, "Sign out")
    ),
    h(
      "div",
      { class: "layout" },
      h(
        "nav",
        { class: "threads", "aria-label": "Threads" },
        h("div", { class: "threads-head" }, h("h2", {}, "Threads"), h("button", { id: "new-thread", type: "button" }, "New chat")),
        h("ul", { id: "thread-list" })
      ),
      h(
        "main",
        { class: "chat", "aria-label": "Chat" },
        h("ol", { id: "turns", class: "turns", "aria-live": "polite" }),
        h("p", { id: "notice", class: "notice", role: "alert", hidden: true }),
        h(
          "form",
          { id: "ask", class: "ask" },
          h("label", { for: "agent", class: "visually-hidden" }, "Agent"),
          h(
            "select",
            { id: "agent" },
            h("option", { value: "" }, "default agent"),
            h("option", { value: "calculator" }, "calculator"),
            h("option", { value: "echo" }, "echo"),
            h("option", { value: "ticker" }, "ticker"),
            h("option", { value: "supervisor" }, "supervisor")
          ),
          h("label", { for: "message", class: "visually-hidden" }, "Message"),
          h("textarea", { id: "message", rows: "2", placeholder: "Ask something… (Enter to send, Shift+Enter for a new line)", required: true }),
          h("button", { id: "send", type: "submit" }, "Send"),
          h("button", { id: "stop", type: "button", disabled: true }, "Stop")
        )
      ),
      h(
        "aside",
        { class: "timeline", "aria-label": "Run timeline" },
        h("h2", {}, "Timeline ", h("span", { id: "timeline-run", class: "muted" })),
        h("div", { id: "timeline" })
      )
    )
  )

  const conn = $("conn")
  const retry = $<HTMLButtonElement>("retry")
  const notice = $("notice")
  const turnsEl = $("turns")
  const timelineEl = $("timeline")
  const stopButton = $<HTMLButtonElement>("stop")
  const message = $<HTMLTextAreaElement>("message")
  const agentSelect = $<HTMLSelectElement>("agent")

  let threadId = randomId("chat")
  const turns = new Map<string, Turn>()
  let selected: Turn | undefined
  /** Turns with events waiting for the next animation frame. */
  const dirty = new Set<Turn>()
  // the agents this server offers (`assistant` only where AGENTWIRE_LLM_* is set); the built-in ones until it answers
  void fetch("/api/agents", { headers: { authorization: `Bearer ${token}` } })
    .then((response) => (response.ok ? response.json() as Promise<unknown> : undefined))
    .then((body) => {
      const listed = body as { default_agent?: unknown; agents?: ReadonlyArray<{ name?: unknown }> } | undefined
      if (!Array.isArray(listed?.agents)) return
      const names = listed.agents.map((a) => a.name).filter((n): n is string => typeof n === "string")
      const select = $<HTMLSelectElement>("agent")
      const chosen = select.value
      const fallback = typeof listed.default_agent === "string" ? `default agent (${listed.default_agent})` : "default agent"
      select.replaceChildren(h("option", { value: "" }, fallback), ...names.map((name) => h("option", { value: name }, name)))
      select.value = names.includes(chosen) ? chosen : ""
    })
    .catch(() => undefined)

  let frameRequested = false
  /** Counters for tests: frames rendered, events rendered, timeline scrolls. */
  const renderStats = { frames: 0, events: 0, scrolls: 0, maxQueued: 0 }
  ;(window as unknown as { agentwire: Record<string, unknown> }).agentwire.renderStats = renderStats

  const showNotice = (text: string | undefined) => {
    notice.hidden = text === undefined
    notice.textContent = text ?? ""
  }

  // ---- connection state: says only what the client saw
  let countdown: ReturnType<typeof setInterval> | undefined
  const renderState = (state: ConnectionState) => {
    states.push(state.status)
    conn.dataset.status = state.status
    if (countdown !== undefined) clearInterval(countdown)
    countdown = undefined
    retry.hidden = !(state.status === "reconnecting" || (state.status === "closed" && state.cause === "replaced"))
    switch (state.status) {
      case "connecting":
        conn.textContent = "Connecting…"
        break
      case "open":
        conn.textContent = state.reconnects === 0
          ? "Connected"
          : state.lost > 0
          ? `Reconnected · ${state.lost} run${state.lost === 1 ? " was" : "s were"} lost${state.resumed > 0 ? `, ${state.resumed} resumed` : ""}`
          : state.resumed > 0
          ? `Reconnected · resumed ${state.resumed} run${state.resumed === 1 ? "" : "s"}, nothing missed`
          : "Reconnected"
        break
      case "resuming":
        conn.textContent = `Reconnected · catching up on ${state.pending} run${state.pending === 1 ? "" : "s"}…`
        break
      case "reconnecting": {
        const tick = () => {
          const s = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000))
          conn.textContent = `Offline (${state.reason}) · retrying${s > 0 ? ` in ${s} s` : "…"} (attempt ${state.attempt})`
        }
        tick()
        countdown = setInterval(tick, 1000)
        break
      }
      case "closed":
        conn.textContent = state.cause === "replaced"
          ? "Disconnected: agentwire is open in too many other tabs or windows"
          : `Disconnected: ${state.reason}`
        break
      case "auth_failed":
        conn.textContent = "Signed out: your token expired"
        break
    }
    if (state.status === "auth_failed") {
      // a fixed token that the server refuses will never work again: ask for a new one
      sessionStorage.removeItem(TOKEN_KEY)
      queueMicrotask(() => signIn("Your sign-in expired. Paste a new token to continue."))
      return
    }
    if (state.status === "open") void refreshThreads()
  }
  client.onState(renderState)
  renderState(client.state)
  retry.addEventListener("click", () => client.reconnectNow())
  window.addEventListener("online", () => client.reconnectNow())
  $("signout").addEventListener("click", () => {
    client.close()
    sessionStorage.removeItem(TOKEN_KEY)
    signIn()
  })

  // ---- threads: the durable ones from history (list_threads); from list_runs (retained runs) if history cannot answer
  const threadButton = (id: string, title: string, detail: string) => {
    const button = h(
      "button",
      { type: "button", class: id === threadId ? "thread current" : "thread", "aria-current": id === threadId ? "true" : undefined },
      h("span", { class: "thread-title" }, title),
      h("span", { class: "muted" }, detail)
    )
    button.addEventListener("click", () => void openThread(id))
    return h("li", {}, button)
  }
  const refreshThreads = async () => {
    const list = $("thread-list")
    try {
      const page = await client.listThreads({ limit: 50 })
      list.replaceChildren(
        ...page.threads.map((t) => threadButton(t.thread_id, t.title === "" ? "(untitled)" : t.title, t.last_status === undefined ? "" : ` · ${t.last_status}`))
      )
      return
    } catch {
      // no history here (or it is down): the runs the log still holds
    }
    let runs: ReadonlyArray<RunInfo>
    try {
      runs = await client.listRuns()
    } catch {
      return
    }
    const byThread = new Map<string, Array<RunInfo>>()
    for (const run of runs) byThread.set(run.thread_id, [...(byThread.get(run.thread_id) ?? []), run])
    list.replaceChildren(
      ...Array.from(byThread, ([id, runsOf]) =>
        threadButton(id, runsOf.at(-1)?.agent_name ?? "", ` ${runsOf.length} run${runsOf.length === 1 ? "" : "s"} · ${runsOf[0]!.status}`)
      )
    )
  }

  /** Shows a thread: runs the log still holds are followed (timeline and all); older ones come from history, as text. */
  const openThread = async (id: string) => {
    threadId = id
    turnsEl.replaceChildren()
    turns.clear()
    timelineEl.replaceChildren()
    selected = undefined
    stopButton.disabled = true
    const [stored, retained] = await Promise.all([
      client.getThread(id).catch((): Thread | undefined => undefined),
      client.listRuns({ thread_id: id }).catch((): ReadonlyArray<RunInfo> => [])
    ])
    if (threadId !== id) return // another thread was opened meanwhile
    const live = new Set(retained.map((r) => r.run_id))
    const said = (run_id: string, role: "user" | "assistant") =>
      stored?.messages.find((m) => m.run_id === run_id && m.role === role)?.content
    const shown = new Set<string>()
    for (const run of stored?.runs ?? []) {
      shown.add(run.run_id)
      if (live.has(run.run_id)) addTurn(client.follow(run.run_id), said(run.run_id, "user"))
      else addStoredTurn(run.run_id, said(run.run_id, "user"), said(run.run_id, "assistant") ?? run.final_response ?? "", run.status)
    }
    // retained runs history does not list (it is down, or they are newer than its last write): oldest first
    for (const info of [...retained].reverse()) if (!shown.has(info.run_id)) addTurn(client.follow(info.run_id), undefined)
    void refreshThreads()
  }
  $("new-thread").addEventListener("click", () => {
    threadId = randomId("chat")
    turnsEl.replaceChildren()
    turns.clear()
    timelineEl.replaceChildren()
    selected = undefined
    stopButton.disabled = true
    void refreshThreads()
    message.focus()
  })

  // ---- one turn: the question, the streamed answer, and its timeline
  const select = (turn: Turn) => {
    selected = turn
    for (const t of turns.values()) t.el.classList.toggle("selected", t === turn)
    timelineEl.replaceChildren(turn.timeline)
    $("timeline-run").textContent = turn.run_id.slice(0, 12) + "…"
    stopButton.disabled = turn.ended
  }

  const makeTurn = (run_id: string, run: Run | undefined, question: string | undefined, state: string) => {
    const q = h("p", { class: "question" }, question ?? "")
    const answer = h("p", { class: "answer", "aria-live": "polite" })
    const status = h("span", { class: "run-status", "data-status": state }, state)
    const el = h("li", { class: "turn", "data-run": run_id, tabindex: "0" }, q, h("div", { class: "answer-box" }, answer, status))
    const timeline = h("ol", { class: "tree", "data-run": run_id })
    const turn: Turn = { run_id, run, el, answer, status, timeline, messages: new Map(), queue: [], ended: run === undefined }
    turns.set(run_id, turn)
    turnsEl.append(el)
    el.addEventListener("click", () => select(turn))
    el.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault()
        select(turn)
      }
    })
    select(turn)
    el.scrollIntoView({ block: "end" })
    return { turn, q }
  }

  const addTurn = (run: Run, question: string | undefined) => {
    const { turn, q } = makeTurn(run.run_id, run, question, "running")
    void follow(turn, q, run)
    return turn
  }

  /** A turn from history: its question, answer and status as stored (the log no longer holds its events). */
  const addStoredTurn = (run_id: string, question: string | undefined, text: string, state: string) => {
    const { turn } = makeTurn(run_id, undefined, question, state)
    turn.answer.textContent = text
    turn.timeline.append(h("li", { class: "item muted" }, "From history: this run's steps are no longer kept."))
    return turn
  }

  // the open agent at each depth, per turn: events nest under the agent that sent them
  const stacks = new WeakMap<Turn, { stack: Array<HTMLElement>; tools: Map<string, HTMLElement>; question: HTMLElement }>()
  const timelinePane = document.querySelector<HTMLElement>("aside.timeline")!

  /** Renders every waiting event, then scrolls the timeline once, only if the reader was at its bottom. */
  const flush = () => {
    frameRequested = false
    const atBottom = timelinePane.scrollTop + timelinePane.clientHeight >= timelinePane.scrollHeight - 8
    let last: HTMLElement | undefined
    for (const turn of dirty) {
      const place = stacks.get(turn)!
      renderStats.maxQueued = Math.max(renderStats.maxQueued, turn.queue.length)
      for (const event of turn.queue.splice(0)) {
        const el = render(turn, event, place.stack, place.tools, place.question)
        renderStats.events++
        if (turn === selected && el !== undefined) last = el
      }
    }
    dirty.clear()
    renderStats.frames++
    if (last !== undefined && atBottom) {
      renderStats.scrolls++
      last.scrollIntoView({ block: "nearest" })
    }
  }
  const enqueue = (turn: Turn, event: AgentEvent) => {
    turn.queue.push(event)
    dirty.add(turn)
    // a hidden tab gets no animation frames: render now rather than hold an unbounded queue
    if (turn.queue.length >= MAX_QUEUED_EVENTS) return flush()
    if (!frameRequested) {
      frameRequested = true
      requestAnimationFrame(flush)
    }
  }

  const follow = async (turn: Turn, question: HTMLElement, run: Run) => {
    stacks.set(turn, { stack: [turn.timeline], tools: new Map(), question })
    try {
      for await (const event of run) enqueue(turn, event)
      if (turn.queue.length > 0) flush()
    } catch (error) {
      if (turn.queue.length > 0) flush()
      turn.status.textContent = "lost"
      turn.status.dataset.status = "lost"
      turn.answer.textContent ||= plainCommandError(error)
      turn.timeline.append(h("li", { class: "item error" }, plainCommandError(error)))
    }
    turn.ended = true
    if (selected === turn) stopButton.disabled = true
  }

  /** Renders one event into the turn's timeline; gives the element added, if any. */
  const render = (
    turn: Turn,
    event: AgentEvent,
    stack: Array<HTMLElement>,
    tools: Map<string, HTMLElement>,
    question: HTMLElement
  ): HTMLElement | undefined => {
    // an agent's own events go into its list (stack[depth + 1]); agent_started into its parent's (stack[depth])
    const level = event.type === "agent_started" ? event.depth : event.depth + 1
    const container = stack[Math.min(level, stack.length - 1)]!
    let added: HTMLElement | undefined
    const item = (cls: string, ...children: Array<Node | string | undefined>) => {
      const li = h("li", { class: `item ${cls}`, "data-seq": String(event.seq), "data-type": event.type }, ...children)
      container.append(li)
      added = li
      return li
    }
    switch (event.type) {
      case "agent_started": {
        if (event.depth === 0 && question.textContent === "") question.textContent = event.task_description
        const children = h("ol", { class: "tree" })
        item("agent", h("span", { class: "label" }, event.agent_name), h("span", { class: "muted" }, ` ${json(event.task_description)}`), children)
        stack.length = event.depth + 1
        stack[event.depth + 1] = children
        break
      }
      case "agent_thinking":
        item("thinking", h("span", { class: "label" }, "thinking"), ` ${event.reasoning}`)
        break
      case "tool_executing": {
        const li = item(
          "tool",
          h("span", { class: "label" }, `${event.tool_name}`),
          h("code", { class: "params" }, json(event.parameters)),
          h("span", { class: "tool-status", "data-status": "running" }, "running…")
        )
        tools.set(event.execution_id, li)
        break
      }
      case "tool_completed": {
        const li = tools.get(event.execution_id)
        const result = event.results.status === "success" ? json(event.results.output) : event.results.error ?? event.results.status
        const target = li ?? item("tool", h("span", { class: "label" }, event.tool_name))
        target.dataset.done = String(event.seq)
        const status = target.querySelector<HTMLElement>(".tool-status") ?? target.appendChild(h("span", { class: "tool-status" }))
        status.dataset.status = event.results.status
        status.textContent = `${event.results.status} · ${formatMs(event.duration_ms)}`
        target.append(h("div", { class: "result", "data-seq": String(event.seq), "data-type": event.type }, `→ ${result}`))
        break
      }
      case "partial_result": {
        const text = (turn.messages.get(event.message_id) ?? "") + event.delta
        turn.messages.set(event.message_id, text)
        if (event.depth === 0) turn.answer.textContent = text
        break
      }
      case "agent_error":
        item("error", plainAgentError(event.error.code, event.error.message))
        break
      case "agent_stopped":
        item("stopped", event.reason === "user_request" ? "Stopped at your request" : "Stopped: the server is shutting down")
        break
      case "agent_completed": {
        item(`done ${event.status}`, h("span", { class: "label" }, `${event.agent_name} ${event.status.replace("_", " ")}`), h("span", { class: "muted" }, ` · ${formatMs(event.duration_ms)}`))
        stack.length = event.depth + 1
        if (event.depth === 0) {
          turn.answer.textContent = event.status === "completed" || turn.answer.textContent === "" ? event.final_response : turn.answer.textContent
          turn.status.textContent = `${event.status.replace("_", " ")} · ${formatMs(event.duration_ms)}`
          turn.status.dataset.status = event.status
          void refreshThreads()
        }
        break
      }
    }
    return added
  }

  // ---- asking and stopping
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault()
    const text = message.value.trim()
    if (text === "") return
    const agent = agentSelect.value === "" ? undefined : agentSelect.value
    showNotice(undefined)
    message.value = ""
    client.start(agent, text, { thread_id: threadId }).then(
      (run) => {
        if (!turns.has(run.run_id)) addTurn(run, text)
      },
      (error: unknown) => {
        // keep every refused text: another may have been typed (or refused) meanwhile
        const now = message.value.trim()
        message.value = now === "" || now === text ? text : now.split("\n").includes(text) ? now : `${now}\n${text}`
        showNotice(plainCommandError(error))
      }
    )
  })
  message.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault()
      $<HTMLFormElement>("ask").requestSubmit()
    }
  })
  stopButton.addEventListener("click", () => {
    const turn = selected
    if (turn === undefined || turn.ended) return
    // the Stop button is about to be disabled: keep the focus somewhere useful
    if (document.activeElement === stopButton) message.focus()
    stopButton.disabled = true
    client.stop(turn.run_id).catch((error: unknown) => {
      stopButton.disabled = false
      showNotice(plainCommandError(error))
    })
  })
  message.focus()
}

const token = tokenFromHash() ?? sessionStorage.getItem(TOKEN_KEY) ?? undefined
if (token !== undefined) {
  sessionStorage.setItem(TOKEN_KEY, token)
  start(token)
} else {
  signIn()
}
