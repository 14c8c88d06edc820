/**
 * `agentwire/client`: the typed client (browsers and Node 24, global `WebSocket`)
 * and its Effect-native face. Imports only the protocol module and `effect`:
 * never server code, never `node:` modules.
 *
 * @module
 */
export * from "./AgentwireClient.ts"
export {
  AgentwireClient,
  type AgentwireClientApi,
  AgentwireClientClosed,
  AgentwireCommandError,
  AgentwireRunLost,
  layer,
  make,
  type RunStream
} from "./Effect.ts"
