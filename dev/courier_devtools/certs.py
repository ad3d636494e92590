"""Throw-away TLS certificates for tests, made with ``openssl`` at test time.

:func:`make_certificates` writes, into one folder, a private certificate authority, a server
certificate it signed (valid for ``127.0.0.1`` and ``localhost`` unless told other names, 2
days), that certificate as a PKCS#12 keystore (what a Kafka broker reads), a client certificate
it signed (mutual TLS), and a second, unrelated CA: a client that trusts only the second CA must
refuse the server.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from courier_devtools.stack.errors import MissingToolError
from courier_devtools.stack.processes import _run

SERVER_NAMES = ("127.0.0.1", "localhost")
"""Names the server certificate is valid for (IP and DNS subject alternative names)."""


@dataclass(frozen=True, kw_only=True)
class Certificates:
    """Paths of the files :func:`make_certificates` wrote (all PEM unless said otherwise)."""

    ca: Path
    """The CA that signed the server certificate: what clients should trust."""
    server_cert: Path
    """The server's certificate followed by the CA's (a chain)."""
    server_key: Path
    """The server's private key (unencrypted PKCS#8)."""
    keystore: Path
    """The server's key and chain as a PKCS#12 keystore (password :attr:`keystore_password`)."""
    keystore_password: str
    client_cert: Path
    """A client certificate signed by :attr:`ca` (for mutual TLS)."""
    client_key: Path
    """The client certificate's private key."""
    other_ca: Path
    """A CA that signed nothing here: trusting only it, a client must refuse the server."""


def _openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        raise MissingToolError(
            "openssl not found: tests make certificates with it (apt-get install openssl)"
        )
    return found


def _ca(openssl: str, directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        what=f"Making the test CA {name}",
    )  # fmt: skip
    return key, cert


def _leaf(
    openssl: str, directory: Path, name: str, *, ca: Path, ca_key: Path, usage: str, names: str
) -> tuple[Path, Path]:
    """A key and a certificate signed by ``ca`` (``usage``: serverAuth or clientAuth)."""
    key, csr, cert = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", "-only.pem"))
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n" + (f"subjectAltName={names}\n" if names else "")
    )
    _run(
        [
            openssl, "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr),
        ],
        what=f"Making the test key {name}",
    )  # fmt: skip
    _run(
        [
            openssl, "x509", "-req", "-sha256", "-days", "2", "-in", str(csr), "-CA", str(ca),
            "-CAkey", str(ca_key), "-CAcreateserial", "-extfile", str(ext), "-out", str(cert),
        ],
        what=f"Signing the test certificate {name}",
    )  # fmt: skip
    return key, cert


def make_certificates(
    directory: Path,
    *,
    server_names: tuple[str, ...] = SERVER_NAMES,
    password: str = "courier-keystore",
) -> Certificates:
    """A test CA, server and client certificates it signed, a keystore and an unrelated CA."""
    openssl = _openssl()
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca(openssl, directory, "courier-test-ca")
    _, other_ca = _ca(openssl, directory, "courier-other-ca")
    names = ",".join(f"IP:{n}" if n[0].isdigit() else f"DNS:{n}" for n in server_names)
    key, signed = _leaf(
        openssl, directory, "server", ca=ca, ca_key=ca_key, usage="serverAuth", names=names
    )
    chain = directory / "server.pem"
    chain.write_text(signed.read_text() + ca.read_text())
    client_key, client_cert = _leaf(
        openssl, directory, "courier-client", ca=ca, ca_key=ca_key, usage="clientAuth", names=""
    )
    keystore = directory / "server.p12"
    _run(
        [
            openssl, "pkcs12", "-export", "-name", "server", "-in", str(signed), "-inkey",
            str(key), "-certfile", str(ca), "-out", str(keystore), "-passout", f"pass:{password}",
        ],
        what="Writing the test server keystore",
    )  # fmt: skip
    return Certificates(
        ca=ca,
        server_cert=chain,
        server_key=key,
        keystore=keystore,
        keystore_password=password,
        client_cert=client_cert,
        client_key=client_key,
        other_ca=other_ca,
    )
