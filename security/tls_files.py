"""Checking the three TLS files (CA, certificate, key) before a process uses them.

Every command that takes ``--tls-ca``/``--tls-cert``/``--tls-key`` (``kolk sc``, ``kolk spu``,
the client commands) and the client constructors run :func:`tls_files_problem` first, so a
wrong file is one line naming the flag and the file — not a traceback from OpenSSL, and not a
"TLS failed" that a client would take for a network problem. Only the ``ssl`` module is used:
a process that runs TLS need not load ``cryptography`` for this (DESIGN.md §11).

Whose fault: always the caller's (a file they named); nothing here is retriable.
"""

from __future__ import annotations

import os
import ssl
import stat

# A PEM CA bundle, certificate chain or key is a few KiB; a file far larger is not one (and
# is not read whole into memory to find out).
TLS_FILE_BYTES_MAX = 1 << 20

CA_FLAG, CERT_FLAG, KEY_FLAG = "--tls-ca", "--tls-cert", "--tls-key"


class TlsFileError(ValueError):
    """A TLS file that cannot be used; the message is one line naming the flag and the file."""


def _read(flag: str, path: str) -> str:
    """The file's text, or TlsFileError saying why it cannot be read or cannot be PEM."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TlsFileError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsFileError(f"{flag} {path}: is a directory, not a file") from None
    except OSError as e:
        raise TlsFileError(f"{flag} {path}: cannot be read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise TlsFileError(f"{flag} {path}: is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise TlsFileError(f"{flag} {path}: not a regular file")
        if st.st_size > TLS_FILE_BYTES_MAX:
            raise TlsFileError(f"{flag} {path}: {st.st_size} bytes, more than a PEM file holds "
                               f"({TLS_FILE_BYTES_MAX} bytes at most)")
        try:
            data = os.read(fd, TLS_FILE_BYTES_MAX + 1)
        except OSError as e:
            raise TlsFileError(f"{flag} {path}: cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise TlsFileError(f"{flag} {path}: not a PEM file (binary data; DER is not accepted)") from None


def _certificates(flag: str, path: str, text: str) -> None:
    """TlsFileError unless ``text`` holds at least one PEM certificate OpenSSL accepts."""
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise TlsFileError(f"{flag} {path}: not a PEM certificate (no BEGIN CERTIFICATE block)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as e:
        raise TlsFileError(f"{flag} {path}: not a valid PEM certificate ({getattr(e, 'reason', None) or e})") from None


def _no_password() -> bytes:
    # Never let OpenSSL prompt on a terminal (a server has none): an encrypted key is refused.
    raise TlsFileError("an encrypted private key")


def check_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    """TlsFileError (one line naming the flag and the file) unless every file given is usable:
    a readable regular PEM file, the CA and certificate hold certificates, the key is an
    unencrypted private key, and the key belongs to the certificate."""
    if ca:
        _certificates(CA_FLAG, ca, _read(CA_FLAG, ca))
    if bool(cert) != bool(key):
        given, missing = (CERT_FLAG, KEY_FLAG) if cert else (KEY_FLAG, CERT_FLAG)
        raise TlsFileError(f"{given} needs {missing} as well")
    if not cert or not key:
        return
    _certificates(CERT_FLAG, cert, _read(CERT_FLAG, cert))
    key_text = _read(KEY_FLAG, key)
    if "PRIVATE KEY-----" not in key_text:
        raise TlsFileError(f"{KEY_FLAG} {key}: not a PEM private key (no BEGIN ... PRIVATE KEY block)")
    if "ENCRYPTED" in key_text:
        raise TlsFileError(f"{KEY_FLAG} {key}: the key is encrypted; give an unencrypted key (kept 0600)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=_no_password)
    except TlsFileError:
        raise TlsFileError(f"{KEY_FLAG} {key}: the key is encrypted; give an unencrypted key (kept 0600)") from None
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or getattr(e, "reason", "") == "KEY_VALUES_MISMATCH":
            raise TlsFileError(f"{KEY_FLAG} {key} does not match {CERT_FLAG} {cert}: the key belongs to another "
                               "certificate") from None
        raise TlsFileError(f"{KEY_FLAG} {key}: not a usable private key for {CERT_FLAG} {cert} "
                           f"({getattr(e, 'reason', None) or e})") from None
    except OSError as e:  # the file changed between the checks above and this load
        raise TlsFileError(f"{KEY_FLAG} {key}: cannot be read: {e.strerror or e}") from None
