/**
 * TLS options of a Kolk client: the CA that signed the cluster's certificates (the server is
 * always verified against it; there is no way to turn verification off) and, for mutual TLS,
 * this client's certificate and key. PEM text or file paths.
 */
import { readFileSync } from "node:fs";
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
