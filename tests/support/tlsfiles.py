"""Certificates for the TLS tests: trustme CAs, written to disk as a server reads them.

:func:`secret_folder` lays files out as a mounted Kubernetes Secret does: the names
are symlinks through ``..data``, itself a symlink to a dated folder, and an update
(:func:`swap_secret`) writes a new dated folder and swaps ``..data`` in one rename.
:func:`client_cert` issues a client certificate with a URI SAN (a SPIFFE id), which
trustme cannot.
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def write_leaf(folder: Path, leaf: trustme.LeafCert, name: str = "tls") -> tuple[Path, Path]:
    """The chain and key of ``leaf`` as ``name.crt`` and ``name.key`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def write_ca(folder: Path, ca: trustme.CA, name: str = "ca.crt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ca.cert_pem.write_to_path(str(path))
    return path


def der(leaf: trustme.LeafCert) -> bytes:
    """The leaf certificate as a peer presents it in a handshake (DER)."""
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def secret_folder(folder: Path, leaf: trustme.LeafCert, version: int = 1) -> tuple[Path, Path]:
    """``folder/tls.crt`` and ``folder/tls.key`` as a mounted Secret lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    dated = folder / f"..2026_11_30_{version:02d}"
    write_leaf(dated, leaf)
    (folder / "..data").symlink_to(dated.name)
    for name in ("tls.crt", "tls.key"):
        (folder / name).symlink_to(f"..data/{name}")
    return folder / "tls.crt", folder / "tls.key"


def swap_secret(folder: Path, cert_pem: bytes, key_pem: bytes, version: int) -> None:
    """Update the Secret: a new dated folder, then ``..data`` swapped atomically."""
    dated = folder / f"..2026_11_30_{version:02d}"
    dated.mkdir()
    (dated / "tls.crt").write_bytes(cert_pem)
    (dated / "tls.key").write_bytes(key_pem)
    tmp = folder / "..data_tmp"
    tmp.symlink_to(dated.name)
    os.replace(tmp, folder / "..data")


def leaf_pems(leaf: trustme.LeafCert) -> tuple[bytes, bytes]:
    return b"".join(b.bytes() for b in leaf.cert_chain_pems), leaf.private_key_pem.bytes()


def client_cert(
    ca: trustme.CA,
    folder: Path,
    *,
    uri: str | None = None,
    dns: str | None = None,
    common_name: str = "client",
) -> tuple[Path, Path]:
    """A client certificate signed by ``ca`` with the given SANs, written to ``folder``."""
    ca_key: Any = ca._private_key
    ca_cert: x509.Certificate = ca._certificate
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    if uri is not None:
        names.append(x509.UniformResourceIdentifier(uri))
    if dns is not None:
        names.append(x509.DNSName(dns))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "client.crt", folder / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def client_context(
    ca_file: Path,
    cert: tuple[Path, Path] | None = None,
    *,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``ca_file``, presenting ``cert`` if given."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    if maximum is not None:
        context.maximum_version = maximum
    return context
