/**
 * Builds the `AgentRegistry` from a list of agents.
 *
 * The layer's requirements are the union of the agents' own requirements: an
 * embedder whose agent needs a `SearchClient` must provide one before the
 * program compiles. Duplicate names or an unknown default agent fail startup.
 *
 * @module
 */
import { Effect, Layer } from "effect"
import type * as Agent from "../services/Agent.ts"
import { AgentRegistry, AgentRegistryError, type RegisteredAgent, UnknownAgentError } from "../services/AgentRegistry.ts"

/** Registry options. */
export interface AgentRegistryOptions {
  /** Agent used when a request names none; defaults to the first agent. */
  readonly defaultAgent?: string | undefined
  /**
   * Agents this process knows of but does not run, by name, with the reason
   * given in their `UNKNOWN_AGENT` answer (e.g. the settings that enable them).
   */
  readonly unavailable?: Readonly<Record<string, string>> | undefined
}

/** A registry holding `agents`; requires what they require. */
export const layer = <const Agents extends ReadonlyArray<Agent.Agent<unknown>>>(
  agents: Agents,
  options: AgentRegistryOptions = {}
): Layer.Layer<AgentRegistry, AgentRegistryError, Agent.Services<Agents[number]>> =>
  Layer.effect(AgentRegistry, Effect.gen(function*() {
    const services = yield* Effect.context<Agent.Services<Agents[number]>>()
    const byName = new Map<string, RegisteredAgent>()
    for (const agent of agents) {
      if (byName.has(agent.name)) {
        return yield* new AgentRegistryError({ message: `agent "${agent.name}" is registered twice` })
      }
      byName.set(agent.name, {
        name: agent.name,
        description: agent.description,
        run: (request, context) =>
          Effect.provideContext(
            agent.run(request, context) as Effect.Effect<string, Agent.AgentError | Agent.ToolError, Agent.Services<Agents[number]>>,
            services
          )
      })
    }
    const defaultAgent = options.defaultAgent ?? agents[0]?.name
    if (defaultAgent === undefined) {
      return yield* new AgentRegistryError({ message: "no agents registered" })
    }
    if (!byName.has(defaultAgent)) {
      return yield* new AgentRegistryError({ message: `default agent "${defaultAgent}" is not registered` })
    }
    const available = [...byName.keys()]
    const unavailable = options.unavailable ?? {}
    const unavailableHint = (name: string | undefined) =>
      name !== undefined && Object.hasOwn(unavailable, name) ? unavailable[name] : undefined
    return AgentRegistry.of({
      defaultAgent,
      agents: agents.map(({ description, name }) => ({ name, description })),
      get: (name) => {
        const agent = byName.get(name ?? defaultAgent)
        return agent === undefined
          ? Effect.fail(new UnknownAgentError({ agent: name ?? defaultAgent, available, hint: unavailableHint(name) }))
          : Effect.succeed(agent)
      }
    })
  }))
