/** Mutual TLS against a real SC and SPU started with a dev CA: the right client certificate
 * works end to end; none, or one from another CA, is a typed error naming the address. */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ClusterUnavailableError, InvalidRequestError, KolkClient, Offset } from "../src/index.js";
import { Cluster } from "./cluster.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const python = process.env.KOLK_PYTHON ?? resolve(root, ".venv/bin/python");
type Pki = Record<string, { cert: string; key: string; ca: string }>;

function devPki(dir: string, nodes: string[], clients: string[]): Pki {
  const out = execFileSync(python, ["-c", "import json, sys; from kolk.security.certs import dev_pki; " +
    "print(json.dumps(dev_pki(sys.argv[1], nodes=json.loads(sys.argv[2]), clients=json.loads(sys.argv[3]))))",
  dir, JSON.stringify(nodes), JSON.stringify(clients)], { encoding: "utf8" });
  return JSON.parse(out) as Pki;
}

describe("mutual TLS", { timeout: 60_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), "kolk-node-pki-"));
  const pki = devPki(join(dir, "a"), ["node"], ["admin"]);
  const other = devPki(join(dir, "b"), ["node"], ["admin"]);
  const n = pki.node;
  const cluster = new Cluster(1, ["--tls-ca", n.ca, "--tls-cert", n.cert, "--tls-key", n.key]);
  const good = { caFile: pki.admin.ca, certFile: pki.admin.cert, keyFile: pki.admin.key };
  before(async () => { await cluster.up({ tls: good }); });
  after(async () => { await cluster.close(); rmSync(dir, { recursive: true, force: true }); });

  it("the right client certificate produces and consumes", async () => {
    const client = new KolkClient({ sc: cluster.sc, tls: good, timeoutMs: 10_000 });
    try {
      await client.createTopic("tls-t");
      const p = client.producer("tls-t");
      const m = await p.send("secret");
      await p.close();
      for await (const r of client.consumer("tls-t", { partition: 0, offset: Offset.absolute(m.offset) })) {
        assert.equal(new TextDecoder().decode(r.value!), "secret");
        break;
      }
    } finally { await client.close(); }
  });

  it("no client certificate is a ClusterUnavailableError naming the address", async () => {
    const client = new KolkClient({ sc: cluster.sc, tls: { caFile: pki.admin.ca }, timeoutMs: 5_000 });
    try {
      await assert.rejects(client.listTopics(), (e: Error) => e instanceof ClusterUnavailableError && e.message.includes(cluster.sc) &&
        /refused this client's certificate/.test(e.message) && !e.retriable);
    } finally { await client.close(); }
  });

  it("no tls option at all against a TLS cluster says so at once (as Python), not after the deadline", async () => {
    const client = new KolkClient({ sc: cluster.sc, timeoutMs: 20_000 });
    const t0 = Date.now();
    try {
      await assert.rejects(client.listTopics(), (e: Error) => e instanceof ClusterUnavailableError && !e.retriable &&
        e.message === `${cluster.sc} requires TLS and this client connected without it: give the CA and a client certificate (tls: { caFile, certFile, keyFile })`);
      assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
    } finally { await client.close(); }
  });

  it("a certificate from another CA is refused", async () => {
    const client = new KolkClient({ sc: cluster.sc, tls: { caFile: pki.admin.ca, certFile: other.admin.cert, keyFile: other.admin.key }, timeoutMs: 5_000 });
    try {
      await assert.rejects(client.listTopics(), (e: Error) => e instanceof ClusterUnavailableError && e.message.includes(cluster.sc));
    } finally { await client.close(); }
  });

  it("a server from another CA is not trusted", async () => {
    const client = new KolkClient({ sc: cluster.sc, tls: { caFile: other.admin.ca, certFile: pki.admin.cert, keyFile: pki.admin.key }, timeoutMs: 5_000 });
    try {
      await assert.rejects(client.listTopics(), (e: Error) => e instanceof ClusterUnavailableError && /certificate/i.test(e.message) && !e.retriable);
    } finally { await client.close(); }
  });

  it("a missing certificate file is an InvalidRequestError naming it", async () => {
    const client = new KolkClient({ sc: cluster.sc, tls: { caFile: join(dir, "nope.crt") }, timeoutMs: 5_000 });
    try {
      await assert.rejects(client.listTopics(), (e: Error) => e instanceof InvalidRequestError && e.message.includes("nope.crt"));
    } finally { await client.close(); }
  });
});
