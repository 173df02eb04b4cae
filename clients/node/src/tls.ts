/**
 * TLS options of a Kolk client: the CA that signed the cluster's certificates (the server is
 * always verified against it; there is no way to turn verification off) and, for mutual TLS,
 * this client's certificate and key. PEM text or file paths.
 */
import { readFileSync } from "node:fs";
import * as net from "node:net";
import { Duplex } from "node:stream";
import * as tls from "node:tls";
import type { ConnectionOptions } from "node:tls";
import { InvalidRequestError } from "./errors.js";

export interface TlsOptions {
  ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer;
  caFile?: string; certFile?: string; keyFile?: string;
  /** The name the server's certificate must carry; default: the host of the address. */
  servername?: string;
}

function pem(what: string, inline: string | Buffer | undefined, file: string | undefined): string | Buffer | undefined {
  if (inline !== undefined && file !== undefined) throw new InvalidRequestError(`tls: give ${what} or ${what}File, not both`);
  if (file === undefined) return inline;
  try {
    return readFileSync(file);
  } catch (e) {
    throw new InvalidRequestError(`tls: cannot read ${what}File ${file}: ${(e as Error).message}`);
  }
}

/** node:tls options for `host` (verification always on). */
export function tlsConnectOptions(tls: TlsOptions, host: string): ConnectionOptions {
  const ca = pem("ca", tls.ca, tls.caFile);
  const cert = pem("cert", tls.cert, tls.certFile);
  const key = pem("key", tls.key, tls.keyFile);
  if (ca === undefined) throw new InvalidRequestError("tls: a CA (ca or caFile) is required to verify the server");
  if ((cert === undefined) !== (key === undefined)) throw new InvalidRequestError("tls: give both cert and key, or neither");
  const isIp = /^[0-9.]+$/.test(host) || host.includes(":");
  return {
    ca, cert, key, rejectUnauthorized: true,
    servername: tls.servername ?? (isIp ? undefined : host),
    // Kolk's dev certificates name 127.0.0.1 / localhost in their SANs; node checks IPs too.
  };
}

/** How long `speaksTls` waits for an answer (Python's TLS_PROBE_TIMEOUT_S). */
export const TLS_PROBE_TIMEOUT_MS = 1_000;

/** Whether `address` answers a TLS ClientHello with a TLS record (handshake or alert), as
 * Python's `speaks_tls` (core/client/admin.py). Asked only after a plaintext connection closed
 * before any answer: a TLS listener drops a plaintext client without a word, which looks like a
 * server going away and would be retried until the deadline. No certificate is checked: nothing
 * is sent after the hello, and the answer only decides which error to report. */
export function speaksTls(address: string, timeoutMs = TLS_PROBE_TIMEOUT_MS): Promise<boolean> {
  const i = address.lastIndexOf(":");
  const host = address.slice(0, i).replace(/^\[|\]$/g, "");
  const port = Number(address.slice(i + 1));
  return new Promise<boolean>((resolveProbe) => {
    let raw: net.Socket | null = null;
    let wrapped: tls.TLSSocket | null = null;
    const done = (v: boolean) => {
      clearTimeout(timer);
      raw?.destroy(); wrapped?.destroy(); capture.destroy();
      resolveProbe(v);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    // node:tls writes its ClientHello into this stream; the probe sends those bytes on a plain socket
    const capture = new Duplex({
      read() { /* nothing comes back this way */ },
      write(chunk: Buffer, _enc, cb) {
        cb();
        if (raw) return;
        raw = net.connect({ host, port }, () => raw!.write(chunk));
        raw.once("data", (head: Buffer) => done(head.length >= 2 && (head[0] === 21 || head[0] === 22) && head[1] === 3));
        raw.on("error", () => done(false));
        raw.on("close", () => done(false));
      },
    });
    wrapped = tls.connect({ socket: capture, rejectUnauthorized: false });
    wrapped.on("error", () => undefined);
  });
}
