/**
 * `npm exec -- node bench/heap-diff.ts <before.heapsnapshot> <after.heapsnapshot> <n> [rows]`:
 * what grew between two heap snapshots of one process, per unit (`n`: e.g. the
 * connections opened between them), by kind of object, biggest first (count and
 * self size per unit). Used by `bench/idle-memory.ts --snapshot`.
 *
 * Objects are told apart more finely than by constructor, so that the
 * anonymous ones say where they come from: a closure by its function's source
 * position (`file:line:column`), a function context by the names of its
 * variables, a plain object by its property names, and anonymous arrays and
 * V8-internal objects by the object that first refers to them (and the edge's
 * name).
 *
 * @module
 */
import { readFileSync } from "node:fs"
import { basename } from "node:path"

interface Raw {
  readonly snapshot: {
    readonly meta: {
      readonly node_fields: Array<string>
      readonly node_types: [Array<string>, ...Array<unknown>]
      readonly edge_fields: Array<string>
      readonly edge_types: [Array<string>, ...Array<unknown>]
      readonly location_fields?: Array<string>
    }
  }
  readonly nodes: Array<number>
  readonly edges: Array<number>
  readonly strings: Array<string>
  readonly locations?: Array<number>
}

export interface Census {
  readonly counts: Map<string, { count: number; size: number }>
}

/** Count and self size per kind of object in one snapshot. */
export const census = (path: string): Map<string, { count: number; size: number }> => {
  const s = JSON.parse(readFileSync(path, "utf8")) as Raw
  const meta = s.snapshot.meta
  const nf = meta.node_fields
  const W = nf.length
  const T = nf.indexOf("type")
  const N = nf.indexOf("name")
  const S = nf.indexOf("self_size")
  const EC = nf.indexOf("edge_count")
  const ef = meta.edge_fields
  const EW = ef.length
  const ET = ef.indexOf("type")
  const EN = ef.indexOf("name_or_index")
  const ETO = ef.indexOf("to_node")
  const nodeTypes = meta.node_types[0]
  const edgeTypes = meta.edge_types[0]
  const count = s.nodes.length / W
  const firstEdge = new Uint32Array(count + 1)
  for (let i = 0, e = 0; i < count; i++) {
    firstEdge[i] = e
    e += s.nodes[i * W + EC]! * EW
  }
  firstEdge[count] = s.edges.length
  const typeOf = (i: number) => nodeTypes[s.nodes[i * W + T]!]!
  const nameOf = (i: number) => s.strings[s.nodes[i * W + N]!]!
  const edgeName = (e: number) => {
    const t = edgeTypes[s.edges[e + ET]!]!
    const v = s.edges[e + EN]!
    return t === "element" || t === "hidden" ? `[${v}]` : s.strings[v]!
  }
  const edgesOf = function*(i: number) {
    for (let e = firstEdge[i]!; e < firstEdge[i + 1]!; e += EW) yield e
  }
  const target = (e: number) => s.edges[e + ETO]! / W

  // the first strong retainer of every node, and the edge's name
  const retainer = new Int32Array(count).fill(-1)
  const retainerEdge = new Int32Array(count).fill(-1)
  for (let i = 0; i < count; i++) {
    for (const e of edgesOf(i)) {
      if (edgeTypes[s.edges[e + ET]!] === "weak") continue
      const to = target(e)
      if (retainer[to] === -1) {
        retainer[to] = i
        retainerEdge[to] = e
      }
    }
  }

  // closure source positions
  const location = new Map<number, string>()
  const scriptNames = new Map<number, string>()
  if (s.locations !== undefined && meta.location_fields !== undefined) {
    const lf = meta.location_fields
    const LW = lf.length
    const LO = lf.indexOf("object_index")
    const LS = lf.indexOf("script_id")
    const LL = lf.indexOf("line")
    const LC = lf.indexOf("column")
    for (let k = 0; k < s.locations.length; k += LW) {
      const node = s.locations[k + LO]! / W
      const script = s.locations[k + LS]!
      location.set(node, `${script}:${s.locations[k + LL]! + 1}:${s.locations[k + LC]! + 1}`)
      if (!scriptNames.has(script) && typeOf(node) === "closure") {
        // closure -> shared -> script -> name
        for (const e of edgesOf(node)) {
          if (edgeName(e) !== "shared") continue
          const sfi = target(e)
          for (const e2 of edgesOf(sfi)) {
            const n2 = edgeName(e2)
            if (n2 !== "script" && n2 !== "script_or_debug_info") continue
            const script2 = target(e2)
            for (const e3 of edgesOf(script2)) {
              if (edgeName(e3) === "name") {
                const str = target(e3)
                scriptNames.set(script, basename(nameOf(str)))
              }
            }
          }
        }
      }
    }
  }
  const where = (i: number) => {
    const l = location.get(i)
    if (l === undefined) return ""
    const [script, ...rest] = l.split(":")
    return ` @${scriptNames.get(Number(script)) ?? `script${script}`}:${rest.join(":")}`
  }

  const propertyNames = (i: number, kinds: ReadonlyArray<string>, max: number) => {
    const names: Array<string> = []
    for (const e of edgesOf(i)) {
      if (!kinds.includes(edgeTypes[s.edges[e + ET]!]!)) continue
      const n = edgeName(e)
      if (n === "map" || n === "__proto__") continue
      names.push(n)
      if (names.length >= max) break
    }
    return names.join(",")
  }

  const short = (i: number) => {
    const type = typeOf(i)
    const name = nameOf(i)
    if (type === "closure") return `closure ${name || "(anon)"}${where(i)}`
    if (type === "string" || type === "concatenated string" || type === "sliced string") return "string"
    return `${type}:${name.slice(0, 50)}`
  }

  const keyOf = (i: number): string => {
    const type = typeOf(i)
    const name = nameOf(i)
    if (type === "closure") return short(i)
    if (type === "string" || type === "concatenated string" || type === "sliced string" || type === "number" || type === "code") {
      const r = retainer[i]!
      return `${type} <- ${r < 0 ? "?" : short(r)}.${r < 0 ? "" : edgeName(retainerEdge[i]!)}`
    }
    if (name === "system / Context") return `Context {${propertyNames(i, ["context"], 8)}}`
    if (name === "Object") return `Object {${propertyNames(i, ["property"], 8)}}`
    if (type === "array" || type === "hidden" || name.startsWith("system /") || name === "" || type === "object shape") {
      const r = retainer[i]!
      return `${type}:${name.slice(0, 40)} <- ${r < 0 ? "?" : short(r)}.${r < 0 ? "" : edgeName(retainerEdge[i]!)}`
    }
    return `${type}:${name.slice(0, 60)}`
  }

  const out = new Map<string, { count: number; size: number }>()
  for (let i = 0; i < count; i++) {
    const key = keyOf(i)
    const size = s.nodes[i * W + S]!
    const entry = out.get(key)
    if (entry === undefined) out.set(key, { count: 1, size })
    else {
      entry.count++
      entry.size += size
    }
  }
  return out
}

/** What grew from `before` to `after`, per unit, biggest first. */
export const diff = (
  before: Map<string, { count: number; size: number }>,
  after: Map<string, { count: number; size: number }>,
  n: number
) => {
  const rows: Array<{ key: string; count: number; bytes: number }> = []
  for (const [key, a] of after) {
    const b = before.get(key) ?? { count: 0, size: 0 }
    rows.push({ key, count: (a.count - b.count) / n, bytes: (a.size - b.size) / n })
  }
  rows.sort((x, y) => y.bytes - x.bytes)
  return rows
}

/** Prints the rows of `diff` that matter. */
export const print = (title: string, rows: ReadonlyArray<{ key: string; count: number; bytes: number }>, max = 80) => {
  const total = rows.reduce((t, r) => t + r.bytes, 0)
  const objects = rows.reduce((t, r) => t + r.count, 0)
  console.log(`\n${title}: ${total.toFixed(0)} B self size, ${objects.toFixed(1)} objects per unit`)
  console.log("   B/unit  objs/unit  kind")
  for (const r of rows.slice(0, max)) {
    if (Math.abs(r.bytes) < 8 && Math.abs(r.count) < 0.5) break
    console.log(`${r.bytes.toFixed(1).padStart(9)} ${r.count.toFixed(2).padStart(10)}  ${r.key}`)
  }
}

if (import.meta.main) {
  const [before, after, n, rows] = process.argv.slice(2)
  if (before === undefined || after === undefined || n === undefined) {
    console.error("usage: node bench/heap-diff.ts <before.heapsnapshot> <after.heapsnapshot> <n> [rows]")
    process.exit(2)
  }
  print(`${basename(after)} − ${basename(before)}, per ${n}`, diff(census(before), census(after), Number(n)), Number(rows ?? 80))
}
