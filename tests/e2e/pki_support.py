"""Certificates generated in the test (the `cryptography` package): CAs, server and client
certificates with DNS, IP and SPIFFE (URI) SANs, TLS client contexts, and a peek at the
certificate a server presents. Nothing is checked in; every run has its own keys."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from e2e_support import write_atomically

_PEM = serialization.Encoding.PEM


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass
class Issued:
    cert: Path
    key: Path
    serial: int


class Pki:
    """A CA (written to `<dir>/<name>-ca.pem`) that issues leaf certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_pem = directory / f"{name}-ca.pem"
        self.ca_pem.write_bytes(self.cert.public_bytes(_PEM))

    def issue(self, stem: str, *, dns: Iterable[str] = (), ips: Iterable[str] = (), uris: Iterable[str] = (),
              server: bool = False, client: bool = False) -> Issued:
        """A leaf certificate and key at `<dir>/<stem>.pem` / `<stem>-key.pem` (replaced atomically,
        so a watcher never reads half a file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.directory / f"{stem}.pem", self.directory / f"{stem}-key.pem", serial)
        write_atomically(issued.key, key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        write_atomically(issued.cert, cert.public_bytes(_PEM))
        return issued


def client_context(ca: Path, identity: Issued | None = None) -> ssl.SSLContext:
    """A TLS client trusting `ca`, presenting `identity` when given."""
    context = ssl.create_default_context(cafile=str(ca))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def presented_serial(host: str, port: int, context: ssl.SSLContext, server_name: str = "localhost") -> int:
    """The serial number of the certificate a fresh TLS connection to host:port is shown."""
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
