"""`kolk cert` and security/certs.py: a CA issues node and client certificates whose chain,
names and key usages are right, and which Python's ssl module accepts for mutual TLS on
127.0.0.1 — while a certificate from another CA, or an expired one, is refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kolk.security import certs

NOW = dt.datetime.now(dt.timezone.utc)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return certs.create_ca("Test CA")


def _ext(pem: bytes, cls: type) -> object:
    return x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(cls)


def test_ca_is_a_self_signed_ca_for_leaves_only(ca: tuple[bytes, bytes]) -> None:
    cert = x509.load_pem_x509_certificate(ca[0])
    cert.verify_directly_issued_by(cert)
    bc = _ext(ca[0], x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(ca[0], x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    _ext(ca[0], x509.SubjectKeyIdentifier)
    assert certs.is_ca(ca[0]) and certs.describe(ca[0])["kind"] == "ca"


def test_leaf_signature_verifies_with_the_ca_public_key(ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = certs.issue(*ca, "spu-1", kind="node")
    leaf = x509.load_pem_x509_certificate(cert_pem)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca[0]))
    certs.verify_issued_by(cert_pem, ca[0])
    other_ca = certs.create_ca("Other CA")
    with pytest.raises(certs.CertificateError):
        certs.verify_issued_by(cert_pem, other_ca[0])
    assert not certs.is_ca(cert_pem)
    assert certs.load_private_key(key_pem).public_key() == leaf.public_key()


def test_node_and_client_differ_by_extended_key_usage(ca: tuple[bytes, bytes]) -> None:
    node, _ = certs.issue(*ca, "sc-0", kind="node")
    client, _ = certs.issue(*ca, "alice", kind="client")
    assert list(_ext(node, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]
    assert list(_ext(client, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certs.peer_kind(node) == "node" and certs.peer_kind(client) == "client"
    with pytest.raises(certs.CertificateError, match="kind"):
        certs.issue(*ca, "x", kind="admin")


def test_san_holds_uris_dns_names_and_ips_with_loopback_defaults_for_nodes(ca: tuple[bytes, bytes]) -> None:
    node, _ = certs.issue(*ca, "spu-1", kind="node")
    san = _ext(node, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    client, _ = certs.issue(*ca, "alice", kind="client")
    with pytest.raises(x509.ExtensionNotFound):
        _ext(client, x509.SubjectAlternativeName)
    explicit, _ = certs.issue(*ca, "spu-2", kind="node", uris=["spiffe://kolk/spu-2"], dns=["spu2.example"],
                              ips=["10.0.0.2"])
    d = certs.describe(explicit)
    assert (d["uris"], d["dns"], d["ips"]) == (["spiffe://kolk/spu-2"], ["spu2.example"], ["10.0.0.2"])


@pytest.mark.parametrize("field, value, words", [
    ("ips", ["999.1.1.1"], "IP address '999.1.1.1'"),
    ("uris", ["not a uri"], "URI 'not a uri'"),
    ("dns", ["bad name!"], "DNS name 'bad name!'"),
])
def test_bad_names_are_refused_naming_the_value(ca: tuple[bytes, bytes], field: str, value: list[str],
                                                words: str) -> None:
    with pytest.raises(certs.CertificateError, match=words):
        certs.issue(*ca, "x", kind="client", **{field: value})


def test_a_ca_key_that_does_not_match_the_ca_certificate_is_refused(ca: tuple[bytes, bytes]) -> None:
    other = certs.create_ca("Other CA")
    with pytest.raises(certs.CertificateError, match="does not match"):
        certs.issue(ca[0], other[1], "x", kind="client")
    leaf = certs.issue(*ca, "spu-1", kind="node")
    with pytest.raises(certs.CertificateError, match="not a CA"):
        certs.issue(*leaf, "x", kind="client")


def test_identity_is_the_first_san_uri_else_the_common_name(ca: tuple[bytes, bytes]) -> None:
    with_uri, _ = certs.issue(*ca, "alice", kind="client", uris=["spiffe://kolk/alice", "urn:kolk:second"])
    plain, _ = certs.issue(*ca, "bob", kind="client")
    assert certs.identity_of(with_uri) == "spiffe://kolk/alice"
    assert certs.identity_of(plain) == "bob"
    der = x509.load_pem_x509_certificate(with_uri).public_bytes(certs.serialization.Encoding.DER)
    assert certs.identity_of(der) == "spiffe://kolk/alice"  # what ssl's getpeercert(True) gives
    assert certs.identity_of(x509.load_der_x509_certificate(der)) == "spiffe://kolk/alice"
    with pytest.raises(ValueError):
        certs.identity_of(b"not a certificate")


def test_describe_says_what_the_certificate_says(ca: tuple[bytes, bytes]) -> None:
    start = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    cert_pem, _ = certs.issue(*ca, "spu-7", kind="node", uris=["urn:kolk:spu-7"], not_before=start,
                              not_after=start + dt.timedelta(days=30))
    d = certs.describe(cert_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert d == {"subject_cn": "spu-7", "issuer_cn": "Test CA", "uris": ["urn:kolk:spu-7"], "dns": ["localhost"],
                 "ips": ["127.0.0.1", "::1"], "not_before": "2030-01-02T03:04:05+00:00",
                 "not_after": "2030-02-01T03:04:05+00:00", "serial": f"{cert.serial_number:x}", "is_ca": False,
                 "kind": "node", "identity": "urn:kolk:spu-7",
                 "sha256_fingerprint": ":".join(f"{b:02X}" for b in cert.fingerprint(certs.hashes.SHA256()))}
    assert certs.validity(cert_pem, NOW) == "not yet valid"
    with pytest.raises(certs.CertificateError, match="private key, not a certificate"):
        certs.describe(ca[1])


def test_an_expired_certificate_can_be_made(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = _expired(ca)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.not_valid_after_utc < NOW
    assert certs.validity(cert_pem, NOW) == "expired"
    with pytest.raises(certs.CertificateError, match="not after"):
        certs.issue(*ca, "x", kind="client", not_before=NOW, not_after=NOW - dt.timedelta(seconds=1))


def _expired(ca: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    return certs.issue(*ca, "old", kind="client", not_before=NOW - dt.timedelta(days=10),
                       not_after=NOW - dt.timedelta(days=1))


def test_write_pair_keeps_the_key_private(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    cert_path, key_path = certs.write_pair(str(tmp_path / "pki"), "ca", *ca)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert Path(cert_path).read_bytes() == ca[0] and Path(key_path).read_bytes() == ca[1]
    assert sorted(os.listdir(tmp_path / "pki")) == ["ca.crt", "ca.key"]  # no temporary files left
    with pytest.raises(certs.CertificateError, match="file name"):
        certs.write_pair(str(tmp_path), "../escape", *ca)


def test_dev_pki_is_idempotent_and_reuses_the_ca(tmp_path: Path) -> None:
    first = certs.dev_pki(str(tmp_path), nodes=["sc-0", "spu-1"], clients=["admin"])
    assert set(first) == {"sc-0", "spu-1", "admin"}
    ca_pem = Path(first["admin"]["ca"]).read_bytes()
    leaf_pem = Path(first["spu-1"]["cert"]).read_bytes()
    for paths in first.values():
        certs.verify_issued_by(Path(paths["cert"]).read_bytes(), ca_pem)
        assert stat.S_IMODE(os.stat(paths["key"]).st_mode) == 0o600
    assert certs.peer_kind(Path(first["sc-0"]["cert"]).read_bytes()) == "node"
    assert certs.peer_kind(Path(first["admin"]["cert"]).read_bytes()) == "client"
    second = certs.dev_pki(str(tmp_path), nodes=["sc-0", "spu-1", "spu-2"], clients=["admin"])
    assert Path(second["admin"]["ca"]).read_bytes() == ca_pem
    assert Path(second["spu-1"]["cert"]).read_bytes() == leaf_pem
    certs.verify_issued_by(Path(second["spu-2"]["cert"]).read_bytes(), ca_pem)
    with pytest.raises(certs.CertificateError, match="distinct"):
        certs.dev_pki(str(tmp_path), nodes=["x"], clients=["x"])


# ---------------------------------------------------------------- a real TLS handshake

def _handshake(server: dict[str, str], client_cert: str, client_key: str, cafile: str,
               host: str = "127.0.0.1") -> tuple[object, object]:
    """Mutual TLS on 127.0.0.1: (what the server saw, what the client saw); each a peer
    identity/reply on success or the exception raised."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.load_verify_locations(cafile)
    sctx.load_cert_chain(server["cert"], server["key"])
    cctx = ssl.create_default_context(cafile=cafile)  # hostname checks on
    cctx.load_cert_chain(client_cert, client_key)
    for ctx in (sctx, cctx):
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default: the certificates must pass it
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with sctx.wrap_socket(conn, server_side=True) as tls:
                seen["server"] = certs.identity_of(tls.getpeercert(binary_form=True))
                tls.sendall(b"ok")
        except Exception as e:  # the verdict is what the test checks
            seen["server"] = e

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=10) as raw, \
                cctx.wrap_socket(raw, server_hostname=host) as tls:
            seen["client"] = tls.recv(2)  # under TLS 1.3 a refused client certificate shows here
    except (OSError, ssl.SSLError) as e:
        seen["client"] = e
    thread.join(10)
    listener.close()
    return seen.get("server"), seen.get("client")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    directory = tmp_path_factory.mktemp("pki")
    paths = certs.dev_pki(str(directory), nodes=["spu-1"], clients=["alice"])
    ca_pem, ca_key = certs.read_ca(str(directory))
    for name, pair in (("stranger", certs.issue(*certs.create_ca("Other CA"), "stranger", kind="client")),
                       ("old", _expired((ca_pem, ca_key)))):
        cert, key = certs.write_pair(str(directory), name, *pair)
        paths[name] = {"cert": cert, "key": key, "ca": paths["alice"]["ca"]}
    return paths


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_mutual_tls_succeeds_with_certificates_from_the_ca(pki: dict[str, dict[str, str]], host: str) -> None:
    server, client = _handshake(pki["spu-1"], pki["alice"]["cert"], pki["alice"]["key"], pki["alice"]["ca"], host)
    assert server == "alice" and client == b"ok"


def test_nodes_can_dial_each_other_with_their_node_certificates(pki: dict[str, dict[str, str]]) -> None:
    server, client = _handshake(pki["spu-1"], pki["spu-1"]["cert"], pki["spu-1"]["key"], pki["spu-1"]["ca"])
    assert server == "spu-1" and client == b"ok"


@pytest.mark.parametrize("who, reason", [("stranger", "unable to get local issuer certificate"),
                                         ("old", "certificate has expired")])
def test_mutual_tls_refuses_a_foreign_or_expired_client_certificate(pki: dict[str, dict[str, str]], who: str,
                                                                     reason: str) -> None:
    server, client = _handshake(pki["spu-1"], pki[who]["cert"], pki[who]["key"], pki[who]["ca"])
    assert isinstance(server, ssl.SSLCertVerificationError), server
    assert server.verify_message == reason
    assert isinstance(client, (ssl.SSLError, OSError)), client


# ---------------------------------------------------------------- the CLI

def _kolk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kolk", "cert", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_cli_makes_a_ca_issues_and_shows(tmp_path: Path) -> None:
    d = str(tmp_path)
    r = _kolk("ca", "--out", d, "--cn", "Ops CA", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["subject_cn"] == "Ops CA"
    r = _kolk("issue", "alice", "--ca", d, "--out", d, "--kind", "client", "--uri", "spiffe://kolk/alice",
              "--ip", "10.1.2.3")
    assert r.returncode == 0, r.stderr
    assert "client certificate for spiffe://kolk/alice" in r.stdout
    assert stat.S_IMODE(os.stat(tmp_path / "alice.key").st_mode) == 0o600
    r = _kolk("show", str(tmp_path / "alice.crt"), "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert (shown["kind"], shown["identity"], shown["issuer_cn"], shown["ips"], shown["validity"]) == \
        ("client", "spiffe://kolk/alice", "Ops CA", ["10.1.2.3"], "valid")
    r = _kolk("show", str(tmp_path / "alice.crt"))
    assert r.returncode == 0 and "identity:    spiffe://kolk/alice" in r.stdout


def test_cli_errors_are_one_line_naming_what_was_wrong(tmp_path: Path) -> None:
    r = _kolk("show", str(tmp_path / "missing.crt"))
    assert r.returncode == 1 and r.stderr == f"kolk cert show: {tmp_path / 'missing.crt'}: No such file or directory\n"
    (tmp_path / "junk.crt").write_text("hello\n")
    r = _kolk("show", str(tmp_path / "junk.crt"))
    assert r.returncode == 1 and r.stderr.endswith("junk.crt: not a PEM or DER X.509 certificate\n")
    assert _kolk("ca", "--out", str(tmp_path)).returncode == 0
    r = _kolk("issue", "x", "--ca", str(tmp_path), "--out", str(tmp_path), "--kind", "node", "--ip", "300.0.0.1")
    assert r.returncode == 1 and r.stderr == "kolk cert issue: IP address '300.0.0.1' is not an IPv4 or IPv6 address\n"
    certs.write_pair(str(tmp_path), "ca", (tmp_path / "ca.crt").read_bytes(), certs.create_ca("Other")[1])
    r = _kolk("issue", "x", "--ca", str(tmp_path), "--out", str(tmp_path), "--kind", "client")
    assert r.returncode == 1 and r.stderr == f"kolk cert issue: {tmp_path / 'ca.key'} does not match " \
                                             f"{tmp_path / 'ca.crt'}\n"
    assert not (tmp_path / "x.crt").exists()
