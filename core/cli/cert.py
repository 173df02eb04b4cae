"""``kolk cert``: make a CA, issue node and client certificates, show what a certificate says.

Everything runs on this machine (security/certs.py does the work). Errors print one line
naming what was wrong and exit with status 1; ``--json`` prints machine output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any

from . import args as A
from .admin import _print

# cryptography is imported by the `cert` commands, not by every `kolk`.

COMMANDS = ("cert",)


def add_commands(sub: Any) -> None:
    cert = sub.add_parser("cert", help="make a CA and node and client certificates for TLS")
    csub = cert.add_subparsers(dest="action", required=True)

    ca = csub.add_parser("ca", help="make a CA: DIR/ca.crt and DIR/ca.key")
    ca.add_argument("--out", required=True, metavar="DIR", help="directory to write ca.crt and ca.key into")
    ca.add_argument("--cn", default="Kolk CA", help="the CA's common name (default 'Kolk CA')")
    ca.add_argument("--days", type=A.CERT_DAYS, default=3650, help="days the CA is valid (default 3650)")
    ca.add_argument("--force", action="store_true", help="replace an existing CA (its certificates stop working)")
    ca.add_argument("--json", action="store_true", help="print JSON")

    issue = csub.add_parser("issue", help="issue a node or client certificate: DIR/NAME.crt and DIR/NAME.key")
    issue.add_argument("name", metavar="NAME", help="the subject common name, and the files' name")
    issue.add_argument("--ca", required=True, metavar="DIR", help="directory holding ca.crt and ca.key")
    issue.add_argument("--out", required=True, metavar="DIR", help="directory to write NAME.crt and NAME.key into")
    issue.add_argument("--kind", required=True, choices=("node", "client"),
                       help="node: an SC or SPU (serverAuth and clientAuth); client: clientAuth only")
    issue.add_argument("--uri", action="append", metavar="URI",
                       help="a SAN URI (repeatable); the first one is the peer's identity instead of NAME")
    issue.add_argument("--dns", action="append", metavar="NAME",
                       help="a SAN DNS name (repeatable; a node's default: localhost)")
    issue.add_argument("--ip", action="append", metavar="IP",
                       help="a SAN IP address (repeatable; a node's default: 127.0.0.1 and ::1)")
    issue.add_argument("--days", type=A.CERT_DAYS, default=825, help="days the certificate is valid (default 825)")
    issue.add_argument("--json", action="store_true", help="print JSON")

    show = csub.add_parser("show", help="what a certificate says: subject, SANs, issuer, validity, kind")
    show.add_argument("file", metavar="FILE", help="a PEM or DER certificate")
    show.add_argument("--json", action="store_true", help="print JSON")


def _read(path: str) -> bytes:
    """A certificate file: a regular file of at most TLS_FILE_BYTES_MAX bytes (never a
    directory, FIFO or device, which would hang or fill memory); CertificateError if not."""
    from kolk.security.certs import CertificateError
    from kolk.security.tls_files import TLS_FILE_BYTES_MAX

    from .files import FileProblem, read_regular_file

    try:
        return read_regular_file(path, TLS_FILE_BYTES_MAX, "certificate file")
    except FileProblem as e:
        if e.problem == "no such file":  # the wording `kolk cert` has always used
            raise CertificateError(f"{path}: No such file or directory") from None
        raise CertificateError(f"{path}: {e.problem}") from None


def _ca(args: argparse.Namespace) -> int:
    from kolk.security import certs

    crt = os.path.join(args.out, certs.CA_NAME + ".crt")
    if not args.force and (os.path.exists(crt) or os.path.exists(crt[:-4] + ".key")):
        raise certs.CertificateError(f"{args.out} already holds a CA; pass --force to replace it "
                                     "(certificates it issued will stop working)")
    cert_pem, key_pem = certs.create_ca(args.cn, args.days)
    cert_path, key_path = certs.write_pair(args.out, certs.CA_NAME, cert_pem, key_pem)
    d = certs.describe(cert_pem)
    _print(args, {"cert": cert_path, "key": key_path, **d},
           f"CA {args.cn!r} written: {cert_path}, {key_path} (keep the key secret)\n"
           f"valid until {d['not_after']}, SHA-256 {d['sha256_fingerprint']}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from kolk.security import certs

    if os.path.isfile(args.ca):
        raise certs.CertificateError(f"--ca {args.ca}: give the directory holding ca.crt and ca.key, not a file")
    ca_cert_pem, ca_key_pem = certs.read_ca(args.ca)
    cert_pem, key_pem = certs.issue(ca_cert_pem, ca_key_pem, args.name, kind=args.kind, uris=args.uri or (),
                                    dns=args.dns, ips=args.ip, days=args.days)
    cert_path, key_path = certs.write_pair(args.out, args.name, cert_pem, key_pem)
    d = certs.describe(cert_pem)
    _print(args, {"cert": cert_path, "key": key_path, **d},
           f"{args.kind} certificate for {d['identity']} written: {cert_path}, {key_path}\n"
           f"valid until {d['not_after']}, SHA-256 {d['sha256_fingerprint']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from kolk.security import certs

    data = _read(args.file)
    try:
        d = certs.describe(data)
    except certs.CertificateError as e:
        raise certs.CertificateError(f"{args.file}: {e}") from None
    d["validity"] = certs.validity(data, dt.datetime.now(dt.timezone.utc))
    sans = [f"URI:{u}" for u in d["uris"]] + [f"DNS:{n}" for n in d["dns"]] + [f"IP:{i}" for i in d["ips"]]
    text = "\n".join([
        f"subject:     CN={d['subject_cn'] or '-'}",
        f"issuer:      CN={d['issuer_cn'] or '-'}",
        f"kind:        {d['kind']}",
        f"identity:    {d['identity'] or '-'}",
        f"names (SAN): {', '.join(sans) or '-'}",
        f"valid:       {d['not_before']} to {d['not_after']} ({d['validity']})",
        f"serial:      {d['serial']}",
        f"SHA-256:     {d['sha256_fingerprint']}",
    ])
    _print(args, d, text)
    return 0


def dispatch(args: argparse.Namespace) -> int:
    from kolk.security.certs import CertificateError

    try:
        return {"ca": _ca, "issue": _issue, "show": _show}[args.action](args)
    except CertificateError as e:
        message = str(e)
    except OSError as e:
        message = f"{e.filename}: {e.strerror or e}" if e.filename else str(e)
    print(f"kolk cert {args.action}: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return 1
