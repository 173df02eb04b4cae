"""Certificates for Kolk's TLS: a CA, node and client certificates, and what a certificate says.

A Kolk CA signs two kinds of leaf certificate, told apart by ExtendedKeyUsage alone:

- a **node** certificate (SC or SPU) has serverAuth and clientAuth, since nodes both serve and
  dial each other; by default it names ``localhost``, ``127.0.0.1`` and ``::1`` so TLS hostname
  checks pass on a local cluster;
- a **client** certificate has clientAuth only.

The **identity** of a peer (DESIGN.md §7) is the first SAN URI of its certificate, else its
subject CN. Keys are EC P-256: quick to make, and every TLS stack speaks them.

The building functions are pure (bytes in, PEM bytes out; time is a parameter); file I/O is in
the small helpers at the end (``write_pair``, ``read_ca``, ``dev_pki``). Every refusal raises
``CertificateError`` (a ``ValueError``) with one sentence naming what was wrong.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE = "node"
CLIENT = "client"
KINDS = (NODE, CLIENT)
CA_DAYS_DEFAULT = 3650
LEAF_DAYS_DEFAULT = 825  # the longest leaf lifetime browsers ever accepted
DAYS_MAX = 36500
CLOCK_SKEW = dt.timedelta(minutes=5)  # a new certificate is valid from a little in the past
NODE_DNS_DEFAULT = ("localhost",)
NODE_IPS_DEFAULT = ("127.0.0.1", "::1")
CA_NAME = "ca"  # the CA's files in a directory: ca.crt, ca.key

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,200}$")


class CertificateError(ValueError):
    """A certificate, key, name or file was refused; the message says which and why."""


# ---------------------------------------------------------------- loading

def load_certificate(data: bytes | x509.Certificate) -> x509.Certificate:
    """A certificate from PEM or DER bytes (or one already loaded)."""
    if isinstance(data, x509.Certificate):
        return data
    if b"PRIVATE KEY-----" in data[:200]:
        raise CertificateError("a private key, not a certificate")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError("not a PEM or DER X.509 certificate") from None


def load_private_key(pem: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"not an unencrypted PEM private key ({e})") from None


def _key_matches(key: Any, cert: x509.Certificate) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


# ---------------------------------------------------------------- building

def _name(common_name: str) -> x509.Name:
    if not common_name or not common_name.strip():
        raise CertificateError("the common name is empty")
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    except ValueError as e:
        raise CertificateError(f"common name {common_name!r}: {e}") from None


def _validity(days: int, now: dt.datetime | None, not_before: dt.datetime | None,
              not_after: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if not isinstance(days, int) or not 1 <= days <= DAYS_MAX:
        raise CertificateError(f"days must be 1 to {DAYS_MAX}, not {days!r}")
    now = _utc(now) if now is not None else dt.datetime.now(dt.timezone.utc)
    start = _utc(not_before) if not_before is not None else now - CLOCK_SKEW
    end = _utc(not_after) if not_after is not None else start + dt.timedelta(days=days)
    if end <= start:
        raise CertificateError(f"not_after {end.isoformat()} is not after not_before {start.isoformat()}")
    return start, end


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def _san(uris: Iterable[str], dns: Iterable[str], ips: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for uri in uris:
        if not isinstance(uri, str) or not _URI.match(uri):
            raise CertificateError(f"URI {uri!r} is not a URI (SCHEME:REST, no spaces)")
        names.append(x509.UniformResourceIdentifier(uri))
    for name in dns:
        labels = name[2:].rstrip(".") if name.startswith("*.") else name.rstrip(".")
        if not labels or len(name) > 253 or not all(_DNS_LABEL.match(p) for p in labels.split(".")):
            raise CertificateError(f"DNS name {name!r} is not a valid host name")
        names.append(x509.DNSName(name))
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CertificateError(f"IP address {ip!r} is not an IPv4 or IPv6 address") from None
    return names


def _key_usage(*allowed: str) -> x509.KeyUsage:
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{f: f in allowed for f in flags})


def _builder(subject: x509.Name, issuer: x509.Name, key: Any, start: dt.datetime, end: dt.datetime,
             ca: bool) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
            .add_extension(_key_usage(*(("key_cert_sign", "crl_sign") if ca else ("digital_signature",))),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))


def _sign(builder: x509.CertificateBuilder, key: Any) -> x509.Certificate:
    eddsa = isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))
    return builder.sign(key, None if eddsa else hashes.SHA256())


def create_ca(common_name: str, days: int = CA_DAYS_DEFAULT, *,
              now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed CA that signs leaf certificates only (path length 0): (cert PEM, key PEM)."""
    name = _name(common_name)
    start, end = _validity(days, now, None, None)
    key = ec.generate_private_key(ec.SECP256R1())
    return _pem(_sign(_builder(name, name, key, start, end, ca=True), key), key)


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, *, kind: str,
          uris: Iterable[str] = (), dns: Iterable[str] | None = None, ips: Iterable[str] | None = None,
          days: int = LEAF_DAYS_DEFAULT, not_before: dt.datetime | None = None,
          not_after: dt.datetime | None = None, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A leaf certificate of ``kind`` (``node`` or ``client``) signed by the CA: (cert PEM, key PEM).

    ``dns`` and ``ips`` left as None mean: for a node, the loopback names; for a client, none.
    ``not_before``/``not_after`` override ``days`` (tests use them to make an expired certificate).
    """
    if kind not in KINDS:
        raise CertificateError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    ca_cert = load_certificate(ca_cert_pem)
    ca_key = load_private_key(ca_key_pem)
    if not _key_matches(ca_key, ca_cert):
        raise CertificateError("the CA key does not match the CA certificate")
    if not is_ca(ca_cert):
        raise CertificateError(f"{_cn(ca_cert.subject) or 'the CA certificate'} is not a CA certificate")
    node = kind == NODE
    san = _san(uris, (NODE_DNS_DEFAULT if node else ()) if dns is None else dns,
               (NODE_IPS_DEFAULT if node else ()) if ips is None else ips)
    name = _name(common_name)
    start, end = _validity(days, now, not_before, not_after)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * node + [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (_builder(name, ca_cert.subject, key, start, end, ca=False)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return _pem(_sign(builder, ca_key), key)


# ---------------------------------------------------------------- reading what a certificate says

def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _ext(cert: x509.Certificate, cls: Any) -> Any:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        return [], [], []
    return (san.get_values_for_type(x509.UniformResourceIdentifier), san.get_values_for_type(x509.DNSName),
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def is_ca(cert: bytes | x509.Certificate) -> bool:
    constraints = _ext(load_certificate(cert), x509.BasicConstraints)
    return bool(constraints and constraints.ca)


def peer_kind(cert: bytes | x509.Certificate) -> str:
    """``node`` if the certificate may serve TLS (EKU serverAuth), else ``client``."""
    eku = _ext(load_certificate(cert), x509.ExtendedKeyUsage)
    return NODE if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH in eku else CLIENT


def identity_of(cert: bytes | x509.Certificate) -> str:
    """The identity Kolk gives a peer: its certificate's first SAN URI, else its subject CN."""
    c = load_certificate(cert)
    uris = _sans(c)[0]
    identity = uris[0] if uris else _cn(c.subject)
    if not identity:
        raise CertificateError("the certificate has neither a SAN URI nor a subject CN to name the peer")
    return identity


def fingerprint(cert: bytes | x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
    return ":".join(f"{b:02X}" for b in load_certificate(cert).fingerprint(hashes.SHA256()))


def verify_issued_by(cert: bytes | x509.Certificate, ca_cert: bytes | x509.Certificate) -> None:
    """Raise CertificateError unless ``ca_cert`` signed ``cert`` (the signature alone, not the dates)."""
    try:
        load_certificate(cert).verify_directly_issued_by(load_certificate(ca_cert))
    except (ValueError, TypeError, InvalidSignature) as e:
        raise CertificateError(f"the certificate was not issued by this CA ({e or 'bad signature'})") from None


def validity(cert: bytes | x509.Certificate, now: dt.datetime) -> str:
    """``valid``, ``expired`` or ``not yet valid`` at ``now``."""
    c, now = load_certificate(cert), _utc(now)
    if now < c.not_valid_before_utc:
        return "not yet valid"
    return "expired" if now > c.not_valid_after_utc else "valid"


def describe(cert_pem: bytes | x509.Certificate) -> dict[str, Any]:
    """What a certificate says, as JSON-ready values."""
    c = load_certificate(cert_pem)
    uris, dns, ips = _sans(c)
    ca = is_ca(c)
    try:
        identity: str | None = identity_of(c)
    except CertificateError:
        identity = None
    return {"subject_cn": _cn(c.subject), "issuer_cn": _cn(c.issuer), "uris": uris, "dns": dns, "ips": ips,
            "not_before": c.not_valid_before_utc.isoformat(), "not_after": c.not_valid_after_utc.isoformat(),
            "serial": f"{c.serial_number:x}", "is_ca": ca, "kind": "ca" if ca else peer_kind(c),
            "identity": identity, "sha256_fingerprint": fingerprint(c)}


# ---------------------------------------------------------------- files

def _check_file_name(name: str) -> None:
    if not _FILE_NAME.match(name) or name in (".", ".."):
        raise CertificateError(f"name {name!r} cannot be a file name (letters, digits, . _ - @ + only)")


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # only if os.replace did not happen
            os.unlink(tmp)


# Keys and certificates alike are 0600, in a directory made 0700 (docs/security.md "Files at
# rest"): one rule for everything Kolk writes. A certificate is not secret, but who holds
# which one is nobody else's business on a shared machine; copy ca.crt out to hand it over.
KEY_FILE_MODE = CERT_FILE_MODE = 0o600
CERT_DIR_MODE = 0o700


def write_pair(directory: str, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[str, str]:
    """Write ``name.crt`` and ``name.key`` (both 0600), each atomically: (cert path, key path).
    A directory this creates is 0700 whatever the umask; one that exists keeps its mode (it
    may be the user's own, such as the current directory)."""
    _check_file_name(name)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=CERT_DIR_MODE, exist_ok=True)
        os.chmod(directory, CERT_DIR_MODE)  # makedirs' mode is cut by the umask
    cert_path, key_path = os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")
    _write_atomic(key_path, key_pem, KEY_FILE_MODE)
    _write_atomic(cert_path, cert_pem, CERT_FILE_MODE)
    return cert_path, key_path


def read_pair(directory: str, name: str) -> tuple[bytes, bytes]:
    """The PEM bytes of ``name.crt`` and ``name.key``; OSError names a missing file."""
    _check_file_name(name)
    base = os.path.join(directory, name)
    with open(base + ".crt", "rb") as c, open(base + ".key", "rb") as k:
        return c.read(), k.read()


def read_ca(directory: str) -> tuple[bytes, bytes]:
    """The CA in ``directory`` (``ca.crt``, ``ca.key``), checked: a CA whose key matches."""
    cert_pem, key_pem = read_pair(directory, CA_NAME)
    where = os.path.join(directory, CA_NAME)
    try:
        cert = load_certificate(cert_pem)
    except CertificateError as e:
        raise CertificateError(f"{where}.crt: {e}") from None
    try:
        key = load_private_key(key_pem)
    except CertificateError as e:
        raise CertificateError(f"{where}.key: {e}") from None
    if not _key_matches(key, cert):
        raise CertificateError(f"{where}.key does not match {where}.crt")
    if not is_ca(cert):
        raise CertificateError(f"{where}.crt is not a CA certificate")
    return cert_pem, key_pem


def _reusable(directory: str, name: str, kind: str, ca_cert_pem: bytes, now: dt.datetime) -> bool:
    try:
        cert_pem, key_pem = read_pair(directory, name)
        cert = load_certificate(cert_pem)
        verify_issued_by(cert, ca_cert_pem)
        return (_key_matches(load_private_key(key_pem), cert) and _cn(cert.subject) == name
                and peer_kind(cert) == kind and validity(cert, now + dt.timedelta(days=1)) == "valid")
    except (OSError, CertificateError):
        return False


def dev_pki(directory: str, nodes: Iterable[str], clients: Iterable[str], *,
            ca_name: str = "Kolk dev CA") -> dict[str, dict[str, str]]:
    """A development CA with node and client certificates in ``directory``.

    Idempotent: an existing CA is reused, and so is every certificate it signed for the same
    name and kind that is still valid for a day; anything else is (re)issued. Returns the
    paths ``{name: {"cert": ..., "key": ..., "ca": ...}}``.
    """
    wanted = [(n, NODE) for n in nodes] + [(c, CLIENT) for c in clients]
    names = [n for n, _ in wanted]
    for n in names:
        _check_file_name(n)
    if CA_NAME in names or len(set(names)) != len(names):
        raise CertificateError(f"names must be distinct and not {CA_NAME!r}: {names}")
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=CERT_DIR_MODE, exist_ok=True)
    os.chmod(directory, CERT_DIR_MODE)  # the dev PKI's own directory: always private
    if os.path.exists(os.path.join(directory, CA_NAME + ".crt")):
        ca_cert_pem, ca_key_pem = read_ca(directory)
    else:
        ca_cert_pem, ca_key_pem = create_ca(ca_name)
        write_pair(directory, CA_NAME, ca_cert_pem, ca_key_pem)
    ca_path = os.path.join(directory, CA_NAME + ".crt")
    now = dt.datetime.now(dt.timezone.utc)
    out = {}
    for name, kind in wanted:
        if not _reusable(directory, name, kind, ca_cert_pem, now):
            write_pair(directory, name, *issue(ca_cert_pem, ca_key_pem, name, kind=kind, now=now))
        out[name] = {"cert": os.path.join(directory, name + ".crt"),
                     "key": os.path.join(directory, name + ".key"), "ca": ca_path}
    return out
