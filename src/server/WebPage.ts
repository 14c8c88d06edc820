/**
 * The web chat page at `GET /`, served by the server itself: no build step,
 * no CDN, no request leaves the origin.
 *
 * How the TypeScript client reaches the browser: the page (`src/web/app.ts`),
 * the client library (`src/client/AgentwireClient.ts`) and the protocol module
 * are served as ES modules at their source paths, their types stripped on the
 * first request with Node 24's own stripper (`node:module`
 * `stripTypeScriptTypes`, whitespace-preserving, so line and column numbers
 * match the sources) and cached in memory. Their one bare import, `effect`, is
 * mapped by an import map to `effect`'s own browser-ready ES modules, served
 * from the installed package (`/vendor/effect/…`, every `.js` file under its
 * `dist`, listed once at startup: nothing else on disk is reachable). So the
 * browser runs exactly the client that Node users import, with the same
 * decoder, and `npm start` needs nothing beyond the runtime dependencies.
 * (Cost: the browser loads about 250 small modules of `effect` on the first
 * visit, from the same server, cached after.)
 *
 * Every response carries a Content-Security-Policy that allows only this
 * origin (scripts, styles, connections; the inline import map by its hash).
 *
 * @module
 */
import { createHash } from "node:crypto"
import { readdirSync, readFileSync } from "node:fs"
import { stripTypeScriptTypes } from "node:module"
import { dirname, join, relative, sep } from "node:path"
import { fileURLToPath } from "node:url"
import { Effect, Layer } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"

const srcDir = fileURLToPath(new URL("..", import.meta.url))

/** Source files the page loads, by URL path (nothing else under src/ is served). */
const SOURCES: ReadonlyArray<string> = [
  "/src/web/app.ts",
  "/src/web/style.css",
  "/src/client/AgentwireClient.ts",
  "/src/protocol/Protocol.ts"
]

/**
 * The import map: `effect` and each of its public modules (`effect/Cause`,
 * `effect/http`…; a few of effect's own files import these by name) to the
 * file under /vendor/effect/.
 */
const importMap = (vendor: ReadonlyMap<string, string>): string => {
  const imports: Record<string, string> = {}
  for (const rel of vendor.keys()) {
    const parts = rel.split("/")
    if (parts.length === 1) imports[rel === "index.js" ? "effect" : `effect/${rel.slice(0, -3)}`] = `/vendor/effect/${rel}`
    else if (parts.length === 2 && parts[1] === "index.js" && parts[0] !== "internal") imports[`effect/${parts[0]}`] = `/vendor/effect/${rel}`
  }
  return JSON.stringify({ imports })
}

const securityHeaders = (importMapText: string) => ({
  "content-security-policy": [
    "default-src 'none'",
    `script-src 'self' 'sha256-${createHash("sha256").update(importMapText).digest("base64")}'`,
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'"
  ].join("; "),
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer"
})

const pageHtml = (importMapText: string) => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agentwire</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/src/web/style.css">
<script type="importmap">${importMapText}</script>
<script type="module" src="/src/web/app.ts"></script>
</head>
<body>
<noscript>This page needs JavaScript.</noscript>
<div id="app"></div>
</body>
</html>
`

/** `effect`'s ES modules: URL path under /vendor/effect/ → file. */
const vendorFiles = (): Map<string, string> => {
  const files = new Map<string, string>()
  const dist = dirname(fileURLToPath(import.meta.resolve("effect")))
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (entry.name.endsWith(".js")) files.set(relative(dist, path).split(sep).join("/"), path)
    }
  }
  walk(dist)
  return files
}

const contentType = (path: string) =>
  path.endsWith(".css") ? "text/css; charset=utf-8" : "text/javascript; charset=utf-8"

/** The page's routes: `/`, the page's sources and `effect`'s modules. Join them to the server's router. */
export const routes: Layer.Layer<never, never, HttpRouter.HttpRouter> = Layer.unwrap(Effect.sync(() => {
  const vendor = vendorFiles()
  const importMapText = importMap(vendor)
  const SECURITY_HEADERS = securityHeaders(importMapText)
  const html = pageHtml(importMapText)
  const cache = new Map<string, string>()
  const source = (urlPath: string): string => {
    const cached = cache.get(urlPath)
    if (cached !== undefined) return cached
    const text = readFileSync(join(srcDir, urlPath.slice("/src/".length)), "utf8")
    const out = urlPath.endsWith(".ts") ? stripTypeScriptTypes(text, { mode: "strip" }) : text
    cache.set(urlPath, out)
    return out
  }

  const page = HttpRouter.add("GET", "/", HttpServerResponse.html(html).pipe(HttpServerResponse.setHeaders({ ...SECURITY_HEADERS, "cache-control": "no-cache" })))
  const sources = SOURCES.map((urlPath) =>
    HttpRouter.add("GET", urlPath as `/${string}`, Effect.sync(() =>
      HttpServerResponse.text(source(urlPath), {
        contentType: contentType(urlPath),
        headers: { ...SECURITY_HEADERS, "cache-control": "no-cache" }
      })))
  )
  const modules = HttpRouter.add("GET", "/vendor/effect/*", (request) =>
    Effect.sync(() => {
      const path = vendor.get(decodeURIComponent(new URL(request.url, "http://x").pathname.slice("/vendor/effect/".length)))
      if (path === undefined) return HttpServerResponse.empty({ status: 404 })
      let text = cache.get(path)
      if (text === undefined) {
        // the source-map comment would make devtools ask for files we do not serve
        text = readFileSync(path, "utf8").replace(/\n\/\/# sourceMappingURL=\S+\s*$/, "\n")
        cache.set(path, text)
      }
      return HttpServerResponse.text(text, {
        contentType: "text/javascript; charset=utf-8",
        headers: { ...SECURITY_HEADERS, "cache-control": "public, max-age=3600" }
      })
    }))
  return Layer.mergeAll(page, modules, ...sources)
}))
