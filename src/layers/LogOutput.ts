/**
 * Where the server's log lines go: one logfmt line per log call, exactly as
 * `Logger.consoleLogFmt` prints them, but written to stdout once per
 * event-loop turn instead of once per line.
 *
 * `process.stdout` writes synchronously on Linux (files, pipes, terminals), so
 * `console.log` costs a `write` syscall per line: one per run ("run ended") on
 * a busy server. Here the lines of one turn are joined and written in one call
 * at the end of the turn (`setImmediate`), in order. Lines still buffered when
 * the process exits (`process.exit`, a crash handled by `src/main.ts`) are
 * written by an `exit` listener; a `SIGKILL` loses at most the current turn's.
 *
 * @module
 */
import { Logger } from "effect"

/** A line sink that joins the lines of one event-loop turn into one `write`. */
export interface LineBuffer {
  /** Queues one line (no trailing newline). */
  readonly push: (line: string) => void
  /** Writes what is queued now. */
  readonly flush: () => void
}

/** A buffer over `write` (each call gets whole lines, each ending in `\n`). */
export const makeLineBuffer = (write: (text: string) => void): LineBuffer => {
  let lines: Array<string> = []
  let scheduled = false
  const flush = () => {
    scheduled = false
    if (lines.length === 0) return
    const text = `${lines.join("\n")}\n`
    lines = []
    write(text)
  }
  return {
    push: (line) => {
      lines.push(line)
      if (!scheduled) {
        scheduled = true
        setImmediate(flush)
      }
    },
    flush
  }
}

let stdoutBuffer: LineBuffer | undefined
const stdoutLines = (): LineBuffer => {
  if (stdoutBuffer === undefined) {
    const buffer = makeLineBuffer((text) => process.stdout.write(text))
    process.on("exit", buffer.flush)
    stdoutBuffer = buffer
  }
  return stdoutBuffer
}

/** `Logger.consoleLogFmt`'s lines, written to `lines` (by default stdout, once per event-loop turn). */
export const logFmt = (lines?: LineBuffer): Logger.Logger<unknown, void> => {
  const sink = lines ?? stdoutLines()
  return Logger.make((options) => sink.push(Logger.formatLogFmt.log(options)))
}
