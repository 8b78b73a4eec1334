"""A throwaway certificate authority for sandboxes, tests and benchmarks (the openssl CLI).

Sandboxes run their agents with mutual TLS, like a production install: the agents' gRPC intake
requires a client certificate signed by this CA, and the agents present theirs to the controller
simulator. Keys are P-256 (quick to make), certificates live a week, files are 0600 like the
README asks of /etc/aca-agent/tls/.

Who holds what in a sandbox (``Pki.identity``):
* ``AGENT`` — every agent: its gRPC server certificate and its client certificate to the controller.
* ``CONTROLLER`` — whoever pushes goal states (tests, benchmarks, ``aca-sandbox push``) and the
  controller simulator's server certificate.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

AGENT = "aca-agent.sandbox"
CONTROLLER = "controller.sandbox"
_DAYS = "7"
_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


class PkiError(Exception):
    """openssl failed; the message has its stderr."""


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]}: exit {proc.returncode}: {proc.stderr.strip()}")


@dataclass(frozen=True)
class Identity:
    """A certificate and its key, both PEM files."""

    name: str
    cert: pathlib.Path
    key: pathlib.Path


@dataclass(frozen=True)
class Pki:
    """A CA in ``dir`` (ca.crt, ca.key) and the identities it issued (<name>.crt, <name>.key)."""

    dir: pathlib.Path

    @property
    def ca(self) -> pathlib.Path:
        return self.dir / "ca.crt"

    def identity(self, name: str) -> Identity:
        """An identity issued before (``issue``)."""
        return Identity(name, self.dir / f"{name}.crt", self.dir / f"{name}.key")

    def issue(self, name: str, extra_names: Sequence[str] = ()) -> Identity:
        """A certificate for ``name`` (subject CN and DNS SAN, plus ``extra_names``), good for
        both ends of a TLS connection (serverAuth, clientAuth)."""
        ident = self.identity(name)
        csr = self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        _openssl("req", *_KEY, "-subj", f"/CN={name}", "-keyout", str(ident.key), "-out", str(csr))
        sans = ",".join(f"DNS:{n}" for n in (name, *extra_names))
        ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.dir / "ca.key"),
                 "-set_serial", f"0x{secrets.token_hex(8)}", "-days", _DAYS, "-extfile", str(ext),
                 "-out", str(ident.cert))  # fmt: skip
        csr.unlink()
        ext.unlink()
        os.chmod(ident.key, 0o600)
        return ident

    def channel_credentials(self, name: str = CONTROLLER) -> grpc.ChannelCredentials:
        """Client credentials of identity ``name``, trusting this CA."""
        import grpc  # on use: the sandbox CLI's other commands do without it

        ident = self.identity(name)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=ident.key.read_bytes(),
            certificate_chain=ident.cert.read_bytes(),
        )

    def server_credentials(self, name: str = CONTROLLER) -> grpc.ServerCredentials:
        """Server credentials of identity ``name`` requiring a client certificate from this CA."""
        import grpc

        ident = self.identity(name)
        return grpc.ssl_server_credentials(
            [(ident.key.read_bytes(), ident.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )


def create_ca(directory: str | os.PathLike[str], name: str = "aca-sandbox CA") -> Pki:
    """A new CA in ``directory`` (created 0700)."""
    pki = Pki(pathlib.Path(directory))
    pki.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _openssl("req", "-x509", *_KEY, "-days", _DAYS, "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(pki.dir / "ca.key"), "-out", str(pki.ca))  # fmt: skip
    os.chmod(pki.dir / "ca.key", 0o600)
    return pki


def sandbox_pki(directory: str | os.PathLike[str]) -> Pki:
    """The sandbox CA in ``directory`` with the AGENT and CONTROLLER identities, made on first use."""
    pki = Pki(pathlib.Path(directory))
    if pki.identity(CONTROLLER).cert.exists():
        return pki
    create_ca(directory)
    pki.issue(AGENT)
    pki.issue(CONTROLLER)
    return pki
