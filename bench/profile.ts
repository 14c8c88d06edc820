/**
 * Summarizes a V8 `.cpuprofile` (from `node --cpu-prof`): the share of samples
 * by package / area (self time), the top functions by self time, and the top
 * functions by inclusive time (a function counted once per sample it is on
 * the stack of). Used by `npm run bench -- --profile`, and runnable alone:
 * `node bench/profile.ts <file.cpuprofile> [top]`.
 *
 * @module
 */
import { readFileSync } from "node:fs"

interface CallFrame {
  readonly functionName: string
  readonly url: string
  readonly lineNumber: number
}

interface ProfileNode {
  readonly id: number
  readonly callFrame: CallFrame
  readonly children?: ReadonlyArray<number>
}

export interface CpuProfile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly samples: ReadonlyArray<number>
  readonly startTime: number
  readonly timeDeltas: ReadonlyArray<number>
}

/** Only samples taken in [from, to] (µs, CLOCK_MONOTONIC like the profile's own times) are counted. */
export interface Window {
  readonly fromMicros: number
  readonly toMicros: number
}

const shortUrl = (url: string) => {
  const nm = url.lastIndexOf("node_modules/")
  if (nm >= 0) return url.slice(nm + "node_modules/".length)
  const src = url.indexOf("/src/")
  if (src >= 0) return url.slice(src + 1)
  const bench = url.indexOf("/bench/")
  if (bench >= 0) return url.slice(bench + 1)
  return url
}

/** Where a frame belongs: a package, agentwire's src/, Node internals, or V8's own buckets. */
const areaOf = (frame: CallFrame): string => {
  const { url, functionName } = frame
  if (url === "") {
    if (functionName === "(garbage collector)") return "V8: garbage collector"
    if (functionName === "(idle)") return "idle"
    if (functionName === "(program)") return "V8/native: (program)"
    return `native: ${functionName || "(anonymous)"}`
  }
  if (url.startsWith("node:")) return `node: ${url.slice(5).split("/")[0]}`
  const nm = url.lastIndexOf("node_modules/")
  if (nm >= 0) {
    const rest = url.slice(nm + "node_modules/".length).split("/")
    const pkg = rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0]!
    return pkg === "effect" ? `effect/${rest.includes("internal") ? "internal" : rest[rest.length - 1]}` : pkg
  }
  if (url.includes("/src/")) return `agentwire: ${shortUrl(url)}`
  return shortUrl(url)
}

const keyOf = (frame: CallFrame) => `${frame.functionName || "(anonymous)"} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`

const pct = (n: number, total: number) => `${((100 * n) / total).toFixed(1).padStart(5)} %`

export const summarizeProfile = (profile: CpuProfile, top = 20, window?: Window): string => {
  const byId = new Map<number, ProfileNode>()
  const parent = new Map<number, number>()
  for (const node of profile.nodes) {
    byId.set(node.id, node)
    for (const child of node.children ?? []) parent.set(child, node.id)
  }
  const self = new Map<string, number>()
  const area = new Map<string, number>()
  const inclusive = new Map<string, number>()
  let total = 0
  let idle = 0
  let outside = 0
  let time = profile.startTime
  for (let s = 0; s < profile.samples.length; s++) {
    time += profile.timeDeltas[s] ?? 0
    if (window !== undefined && (time < window.fromMicros || time > window.toMicros)) {
      outside++
      continue
    }
    const id = profile.samples[s]!
    const node = byId.get(id)
    if (node === undefined) continue
    if (node.callFrame.functionName === "(idle)") {
      idle++
      continue
    }
    total++
    const key = keyOf(node.callFrame)
    self.set(key, (self.get(key) ?? 0) + 1)
    const a = areaOf(node.callFrame)
    area.set(a, (area.get(a) ?? 0) + 1)
    const seen = new Set<string>()
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const frame = byId.get(at)!.callFrame
      if (frame.functionName === "(root)") continue
      const k = keyOf(frame)
      if (!seen.has(k)) {
        seen.add(k)
        inclusive.set(k, (inclusive.get(k) ?? 0) + 1)
      }
    }
  }
  const list = (m: Map<string, number>, n: number) =>
    [...m.entries()].sort((x, y) => y[1] - x[1]).slice(0, n).map(([k, v]) => `  ${pct(v, total)}  ${k}`)
  return [
    `CPU profile: ${total} busy samples (${idle} idle samples left out${
      window === undefined ? "" : `, ${outside} outside the measured rounds`
    }); shares are of busy samples.`,
    "",
    "Self time by area:",
    ...list(area, top),
    "",
    "Top functions by self time:",
    ...list(self, top),
    "",
    "Top functions by inclusive time:",
    ...list(inclusive, top),
    "",
    "agentwire's own functions (src/) by inclusive time:",
    ...list(new Map([...inclusive.entries()].filter(([k]) => k.includes(" src/"))), top)
  ].join("\n")
}

if (import.meta.main) {
  const file = process.argv[2]
  if (file === undefined) {
    process.stderr.write("usage: node bench/profile.ts <file.cpuprofile> [top]\n")
    process.exit(2)
  }
  process.stdout.write(`${summarizeProfile(JSON.parse(readFileSync(file, "utf8")) as CpuProfile, Number(process.argv[3] ?? "25"))}\n`)
}
