// Encode/decode throughput of capnp-es on Kolk messages (docs/clients-node.md). Run after `npm run build`:
// node scripts/bench-capnp.mjs
import * as $ from "capnp-es";
import { SpuRequest, SpuResponse, Acks } from "../dist/src/gen/kolk.js";
const data = new Uint8Array(16 << 10).fill(7);
function encProduce() {
  const m = new $.Message(); const q = m.initRoot(SpuRequest); const p = q._initProduce();
  p.topic = "bench"; p.partition = 3; p.acks = Acks.ALL; p.timeoutMs = 30000;
  p._initRecords(data.length).copyBuffer(data); return new Uint8Array(m.toArrayBuffer());
}
function decProduce(b) { const r = new $.Message(b, false).getRoot(SpuRequest); return r.produce.records.toUint8Array().length; }
function encFetchResp() {
  const m = new $.Message(); const r = m.initRoot(SpuResponse); const f = r._initFetch();
  f._initResult().ok = true; f._initRecords(data.length).copyBuffer(data); f.highWatermark = 100n; f.nextOffset = 101n;
  return new Uint8Array(m.toArrayBuffer());
}
function decFetchResp(b) { const r = new $.Message(b, false).getRoot(SpuResponse); return r.fetch.records.toUint8Array().length + Number(r.fetch.highWatermark); }
function bench(name, fn) {
  const end = Date.now() + 2000; let n = 0; while (Date.now() < end) { fn(); n++; }
  console.log(`${name}: ${Math.round(n / 2)} ops/s`);
}
const pb = encProduce(), fb = encFetchResp();
bench("produce request encode+decode (16 KiB records)", () => decProduce(encProduce()));
bench("produce request decode only", () => decProduce(pb));
bench("fetch response encode+decode (16 KiB records)", () => decFetchResp(encFetchResp()));
bench("fetch response decode only", () => decFetchResp(fb));
