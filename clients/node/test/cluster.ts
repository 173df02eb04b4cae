/**
 * A real Kolk cluster for the end-to-end tests: one `kolk sc` and `spus` `kolk spu` processes
 * on 127.0.0.1, ports from the OS, each stopped by its own pid in close(). The binary is
 * $KOLK_BIN (default ../../.venv/bin/kolk). Waiting is polling a condition with a deadline.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { KolkClient } from "../src/index.js";

const here = dirname(fileURLToPath(import.meta.url));
export const KOLK_BIN = process.env.KOLK_BIN ?? resolve(here, "../../../../.venv/bin/kolk");
export const SECRET = "test-cluster-secret-0123456789";
export const START_TIMEOUT_MS = 45_000;

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => { const a = s.address(); s.close(() => res(typeof a === "object" && a ? a.port : 0)); });
    s.on("error", rej);
  });
}

/** Poll `fn` every `intervalMs` until it gives something truthy; fail after `timeoutMs`. */
export async function waitFor<T>(what: string, fn: () => T | null | undefined | false | Promise<T | null | undefined | false>,
                                 timeoutMs = START_TIMEOUT_MS, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  while (Date.now() < deadline) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

export class Cluster {
  readonly root = mkdtempSync(join(tmpdir(), "kolk-node-"));
  readonly procs = new Map<string, ChildProcess>();
  sc = "";
  spuAddresses = new Map<number, string>();

  constructor(readonly spus = 1, readonly nodeArgs: string[] = []) {}

  private start(name: string, args: string[]): void {
    const log = openSync(join(this.root, `${name}.log`), "a");
    const p = spawn(KOLK_BIN, args, { stdio: ["ignore", log, log], env: { ...process.env, KOLK_CLUSTER_SECRET: SECRET } });
    this.procs.set(name, p);
  }

  logs(): string {
    return [...this.procs.keys()].map((n) => { try { return `--- ${n}\n` + readFileSync(join(this.root, `${n}.log`), "utf8").slice(-3000); } catch { return ""; } }).join("\n");
  }

  async up(clientOpts: Record<string, unknown> = {}): Promise<this> {
    const [raft, admin] = [await freePort(), await freePort()];
    this.sc = `127.0.0.1:${admin}`;
    this.start("sc", ["sc", "--id", "1", "--data-dir", join(this.root, "sc"), "--raft", `127.0.0.1:${raft}`, "--admin", this.sc,
      "--heartbeat-timeout-ms", "3000", ...this.nodeArgs]);
    const c = new KolkClient({ sc: this.sc, timeoutMs: 2000, ...clientOpts });
    try {
      await waitFor("the SC to lead", async () => (await c.clusterStatus()).leader);
    } catch (e) { throw new Error(`${(e as Error).message}\n${this.logs()}`); } finally { await c.close(); }
    for (let i = 1; i <= this.spus; i++) {
      this.spuAddresses.set(i, `127.0.0.1:${await freePort()}`);
      this.startSpu(i);
    }
    for (let i = 1; i <= this.spus; i++) {
      await waitFor(`SPU ${i} to serve`, async () => existsSync(join(this.root, `spu${i}.ready`))).catch((e) => { throw new Error(`${e.message}\n${this.logs()}`); });
    }
    return this;
  }

  startSpu(i: number): void {
    const ready = join(this.root, `spu${i}.ready`);
    rmSync(ready, { force: true });
    this.start(`spu${i}`, ["spu", "--id", String(i), "--sc", this.sc, "--data-dir", join(this.root, `spu${i}`), "--ready-file", ready,
      "--public", this.spuAddresses.get(i)!, ...this.nodeArgs]);
  }

  private static running(p: ChildProcess): boolean { return p.exitCode === null && p.signalCode === null; }

  /** Signals one process by its pid and waits for it to exit. */
  async kill(name: string, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const p = this.procs.get(name);
    if (!p || !p.pid || !Cluster.running(p)) return;
    const gone = new Promise((r) => p.once("exit", r));
    try { process.kill(p.pid, signal); } catch { /* already gone */ }
    await gone;
  }

  async close(): Promise<void> {
    for (const name of this.procs.keys()) await this.kill(name);
    rmSync(this.root, { recursive: true, force: true });
  }
}
