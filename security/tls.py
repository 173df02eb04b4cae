"""TLS for every Kolk connection (DESIGN.md §7): contexts, and who is on the other end.

* :class:`TlsConfig` names a CA file, this side's certificate and key. A server built from it
  requires a client certificate signed by that CA (mutual TLS); a client checks the server's
  certificate against the CA and its host name, and presents its own certificate.
* A handshake a server refuses (plaintext, no certificate, another CA, expired) is logged
  with the reason, through the context's ``sslobject_class``: asyncio itself keeps TLS
  handshake failures out of the log.
* :class:`Peer` is what a server knows of a connection: the identity from the client
  certificate (first SAN URI, else subject CN; ``anonymous`` without TLS), whether the
  certificate is a node's (it may act as a server: EKU serverAuth) and the client's address.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kolk.tls")

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class TlsConfig:
    ca: str  # PEM file of the CA that signs every node and client certificate
    cert: str | None = None  # this side's certificate (required for servers)
    key: str | None = None

    def server_context(self, log_refusals: bool = True) -> ssl.SSLContext:
        """The listener's context: mutual TLS. ``log_refusals``: log a refused handshake here
        (without the peer, which this layer does not know); False for a listener that logs it
        itself with the peer."""
        if not self.cert or not self.key:
            raise ValueError("a TLS listener needs a certificate and a key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # TLS 1.2 (ECDHE, AES-GCM): a refused client certificate then fails the handshake the
        # client is waiting for, so the client is told at connect. Under TLS 1.3 the client's
        # handshake completes first and it only sees the connection drop on its first call.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(self.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no connection
        if log_refusals:
            ctx.sslobject_class = _LoggedHandshake
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(self.ca)
        if self.cert and self.key:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


class _LoggedHandshake(ssl.SSLObject):
    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as e:
            # asyncio does not tell the SSL object who the client is; a listener that accepts
            # its own sockets (core/observe/http.py) logs the refusal with the peer instead. The
            # same refusal repeated (a scraper with a bad certificate, every 15 s) is one line per
            # reason and 30 s where the node rate-limits ``repeat_key`` (core/observe/log_limits.py).
            why = explain_ssl_error(e)
            log.warning("TLS handshake refused: %s", why, extra={"repeat_key": ("tls refused", why)})
            raise


def explain_ssl_error(e: BaseException) -> str:
    """One line a user can act on, for a TLS failure on either side."""
    text = str(e)
    reason = getattr(e, "reason", None) or ""
    hints = {
        "WRONG_VERSION_NUMBER": "the other side does not speak TLS (plaintext?)",
        "HTTP_REQUEST": "the other side sent plaintext, not TLS",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate; this listener requires one",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate and none was sent",
        "CERTIFICATE_VERIFY_FAILED": "the certificate is not signed by the trusted CA, expired, or for another name",
        "TLSV1_ALERT_UNKNOWN_CA": "the other side does not trust the CA that signed this certificate",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the other side says this certificate has expired",
        "SSLV3_ALERT_BAD_CERTIFICATE": "the other side refused this certificate",
        "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake: it requires a client certificate "
                                         "signed by its CA",
    }
    verify = getattr(e, "verify_message", None)  # e.g. "IP address mismatch, certificate is not valid for ..."
    for key, hint in hints.items():
        if key in reason or key.lower().replace("_", " ") in text.lower() or key in text:
            return f"{hint} ({reason or text}{': ' + verify if verify else ''})"
    return f"{verify or reason or text}"


@dataclass(frozen=True)
class Peer:
    identity: str
    address: str  # the client's IP address as the server sees it
    node: bool = False  # a node certificate (may act as a server)
    tls: bool = False


def peer_of(transport: Any) -> Peer:
    """Who is on the other end of a server-side transport."""
    peername = transport.get_extra_info("peername")
    address = str(peername[0]) if peername else ""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return Peer(ANONYMOUS, address)
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return Peer(ANONYMOUS, address, tls=True)
    # cryptography is loaded only by processes that run TLS (footprint: DESIGN.md §11).
    from cryptography import x509

    from .certs import NODE, identity_of, peer_kind

    cert = x509.load_der_x509_certificate(der)
    return Peer(identity_of(cert), address, peer_kind(cert) == NODE, True)


def server_hostname(address: str) -> str:
    """The name a client checks the server certificate against: the host of ``address`` (an
    IP address is checked against the certificate's SAN IP entries)."""
    return address.rsplit(":", 1)[0].strip("[]")
