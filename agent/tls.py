"""What every channel's start-up check shares: which addresses stay on this host, and whether
certificate, key and CA files are usable, so a half-configured TLS is refused before anything
listens or connects (ConfigError: aca-agent exits 2 with the reason on one line)."""

from __future__ import annotations

import ipaddress
import os
import pathlib
import ssl
import stat


class ConfigError(ValueError):
    """A setting the agent must not start with; the message is the one-line reason."""


def _host_of(address: str) -> str:
    """The host part of a gRPC target or a host:port (``[v6]:port``, ``ipv4:h:p``, ``dns:///h:p``)."""
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if address.startswith(scheme):
            address = address[len(scheme) :]
            break
    if "://" in address:  # librdkafka's PROTOCOL://host:port
        address = address.split("://", 1)[1]
    if address.startswith("["):
        return address[1 : address.find("]")]
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else address


def is_local(address: str) -> bool:
    """True for a unix socket or a loopback address (127.0.0.0/8, ::1, localhost): only
    processes on this host can reach it, so plaintext there exposes nothing to the network."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = _host_of(address.strip())
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def readable_file(path: str, what: str) -> pathlib.Path:
    """``path`` as a Path once it can be read (ConfigError naming ``what`` otherwise)."""
    file = pathlib.Path(path)
    try:
        with file.open("rb") as fh:
            if not fh.read(1):
                raise ConfigError(f"{what} {path} is empty")
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    return file


def check_key_pair(cert: str, key: str, where: str) -> None:
    """The certificate and key load together (PEM, and the key is the certificate's)."""
    readable_file(cert, f"{where} certificate")
    readable_file(key, f"{where} key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate" if "MISMATCH" in str(exc) else str(exc)
        raise ConfigError(f"{where} certificate {cert} and key {key}: {reason}") from None


def check_ca(path: str, what: str) -> None:
    """A PEM file holding at least one CA certificate."""
    readable_file(path, what)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"{what} {path} holds no usable certificate: {exc}") from None


def read_secret(path: str, what: str) -> str:
    """A secret's file content (stripped), refused when group or others may access the file."""
    file = readable_file(path, what)
    mode = os.stat(file).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} is accessible by group or others (mode {mode & 0o777:04o}); chmod 0600 it"
        )
    return file.read_text().strip()
