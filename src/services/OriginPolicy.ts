/**
 * OriginPolicy: which browser `Origin`s may open a WebSocket.
 *
 * `AGENTWIRE_ALLOWED_ORIGINS` lists origins (`scheme://host[:port]`, no path).
 * When it is set, a handshake that carries an `Origin` header not in the list
 * is refused (403). A handshake without an `Origin` header is allowed: only
 * browsers send one, and the policy exists to stop other web pages from using
 * a browser's credentials; non-browser clients authenticate with their token.
 * When the variable is unset every origin is allowed.
 *
 * Origins are compared after normalisation: scheme and host in lower case,
 * the default port (80 for http/ws, 443 for https/wss) dropped, so
 * `HTTPS://App.Example.com:443` matches `https://app.example.com`.
 *
 * @module
 */
import { Option } from "effect"

const DEFAULT_PORTS: Record<string, string> = { http: "80", https: "443", ws: "80", wss: "443" }

/**
 * The normalised form of an origin `scheme://host[:port]`, or `undefined`
 * when `text` is not one (a path, query, fragment, user info, `*`, `null`
 * or an empty host are all refused; so is a wildcard such as `https://*.example.com`).
 */
export const normalizeOrigin = (text: string): string | undefined => {
  const match = /^([a-z][a-z0-9+.-]*):\/\/([^/?#@\s\\]+)$/i.exec(text.trim())
  if (match === null) return undefined
  const scheme = match[1]!.toLowerCase()
  const authority = match[2]!
  if (scheme === "http" || scheme === "https" || scheme === "ws" || scheme === "wss") {
    try {
      const url = new URL(`${scheme}://${authority}`)
      if (url.username !== "" || url.password !== "") return undefined
      // a DNS name (IDNs arrive punycoded), an IPv4 or a bracketed IPv6 address; no wildcard
      if (!/^(?:[a-z0-9_-]+\.)*[a-z0-9_-]+$|^\[[0-9a-f:.]+\]$/.test(url.hostname)) return undefined
      const port = url.port === "" || url.port === DEFAULT_PORTS[scheme] ? "" : `:${url.port}`
      return `${scheme}://${url.hostname}${port}`
    } catch {
      return undefined
    }
  }
  // other schemes (app shells such as capacitor://localhost): host[:port], compared in lower case
  return /^[a-z0-9.-]+(?::\d{1,5})?$/i.test(authority) ? `${scheme}://${authority.toLowerCase()}` : undefined
}

/** What `isOriginAllowed` needs from the settings. */
export interface OriginPolicySettings {
  /** Normalised allowed origins; none = every origin is allowed. */
  readonly allowedOrigins: Option.Option<ReadonlyArray<string>>
}

/**
 * Whether a handshake with this `Origin` header value may proceed.
 *
 * - no list configured: `true`;
 * - header absent (`undefined`, non-browser client): `true`;
 * - otherwise `true` only when the normalised header equals a listed origin
 *   (an unparsable header, or the opaque origin `null`, is refused).
 */
export const isOriginAllowed = (settings: OriginPolicySettings, origin: string | undefined): boolean => {
  if (Option.isNone(settings.allowedOrigins) || origin === undefined) return true
  const normalized = normalizeOrigin(origin)
  return normalized !== undefined && settings.allowedOrigins.value.includes(normalized)
}
