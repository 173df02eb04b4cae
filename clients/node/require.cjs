// @kolk/client is ES modules only (its zstd codec loads with a top-level await, which require()
// cannot wait for): CommonJS callers get this one line instead of Node's "No exports main defined".
throw new Error('@kolk/client is an ES module, so require() cannot load it: use import { KolkClient } from "@kolk/client", or from CommonJS const { KolkClient } = await import("@kolk/client")');
