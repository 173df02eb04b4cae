/**
 * SmartModule chains for consume and produce: `[{name: "x@1", params: {k: "v"}}]` or
 * `["x@1"]`, validated as core/client/consumer.py normalize_chain does (a stage is NAME[@VERSION]
 * or {name, params}; parameter values are text, numbers and booleans are written as text),
 * within the wire limits (16 stages, 64 params a stage).
 */
import { InvalidRequestError } from "./errors.js";
import type { SmartModuleInvocation } from "./gen/kolk.js";
import type * as $ from "capnp-es";
import { CHAIN_STAGES_MAX, NAME_CHARS_MAX, SMARTMODULE_PARAMS_MAX, TEXT_CHARS_MAX } from "./limits.js";

export type ParamValue = string | number | boolean | bigint;
export type ChainStage = string | { name: string; params?: Record<string, ParamValue> };
export interface Stage { name: string; params: Array<[string, string]> }

function text(module: string, x: unknown): string {
  if (typeof x === "string") return x;
  if (typeof x === "number" || typeof x === "boolean" || typeof x === "bigint") return String(x);
  throw new InvalidRequestError(`SmartModule ${module}: parameter values are text, numbers or booleans, not ${typeof x}`);
}

export function normalizeChain(chain: ChainStage[] | undefined | null): Stage[] {
  if (chain === undefined || chain === null) return [];
  if (!Array.isArray(chain)) {
    throw new InvalidRequestError(`smartmodules is a list of stages, e.g. ["name@1"] or [{name: "name", params: {key: "value"}}], not ${typeof chain}`);
  }
  if (chain.length > CHAIN_STAGES_MAX) {
    throw new InvalidRequestError(`a SmartModule chain has ${chain.length} stages; at most ${CHAIN_STAGES_MAX}`);
  }
  return chain.map((stage) => {
    const name = typeof stage === "string" ? stage : (stage !== null && typeof stage === "object" ? stage.name : undefined);
    if (typeof name !== "string" || name === "" || name.length > NAME_CHARS_MAX) {
      throw new InvalidRequestError(`a SmartModule chain stage is NAME[@VERSION] or {name, params}, got ${JSON.stringify(stage)?.slice(0, 200)}`);
    }
    const raw = typeof stage === "string" ? {} : (stage.params ?? {});
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      throw new InvalidRequestError(`SmartModule ${name}: params is an object of text values`);
    }
    const params = Object.entries(raw).map(([k, v]) => [k, text(name, v)] as [string, string]);
    if (params.length > SMARTMODULE_PARAMS_MAX) {
      throw new InvalidRequestError(`SmartModule ${name} has ${params.length} params; at most ${SMARTMODULE_PARAMS_MAX}`);
    }
    for (const [k, v] of params) {
      if (k.length > TEXT_CHARS_MAX || v.length > TEXT_CHARS_MAX) {
        throw new InvalidRequestError(`SmartModule ${name}: parameter ${k.slice(0, 64)} is over ${TEXT_CHARS_MAX} characters`);
      }
    }
    return { name, params };
  });
}

/** Fills a request's `smartmodules` list (already initialised to stages.length). */
export function writeChain(list: $.List<SmartModuleInvocation>, stages: Stage[]): void {
  stages.forEach((s, i) => {
    const inv = list.get(i);
    inv.name = s.name;
    const params = inv._initParams(s.params.length);
    s.params.forEach(([k, v], j) => { const kv = params.get(j); kv.key = k; kv.value = v; });
  });
}
