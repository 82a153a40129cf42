"""TLS and mutual TLS on the receiver, with certificates made for the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pcns.app import running_service
from tests.support import Client, ServiceFiles


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(
    path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    crt, pem = path.with_suffix(".crt"), path.with_suffix(".key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    return crt, pem


async def test_mutual_tls(tmp_path: Path, db_url: str) -> None:
    """With client_ca set, a client without a certificate from that CA cannot connect; one with
    it is served over TLS."""
    ca_cert, ca_key = _issue("pcns test CA", None, server=False)
    ca_crt, _ = _write(tmp_path / "ca", ca_cert, ca_key)
    srv_crt, srv_key = _write(
        tmp_path / "server", *_issue("pcns", (ca_cert.subject, ca_key), server=True)
    )
    cli_crt, cli_key = _write(
        tmp_path / "client", *_issue("dc01", (ca_cert.subject, ca_key), server=False)
    )
    files = ServiceFiles(
        tmp_path / "svc",
        db_url,
        server={"tls_cert": srv_crt, "tls_key": srv_key, "client_ca": ca_crt},
    )
    anonymous = ssl.create_default_context(cafile=str(ca_crt))
    with_cert = ssl.create_default_context(cafile=str(ca_crt))
    with_cert.load_cert_chain(cli_crt, cli_key)
    url = f"https://127.0.0.1:{files.port}"
    async with running_service(files.settings()) as svc:
        assert svc.url == url
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=anonymous)) as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url + "/healthz") as resp:
                    await resp.read()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=with_cert)) as s:
            async with s.get(url + "/healthz") as resp:
                assert resp.status == 200
            client = Client(files, s)
            body = b'{"user": "alice", "password": "Over-Tls-1"}'
            async with s.post(
                url + "/v1/password-changes", data=body, headers=client.signed_headers(body)
            ) as resp:
                assert resp.status == 202
