"""A real OpenLDAP ``slapd`` for tests: a temporary directory, free ports, TLS from a throwaway CA.

The server listens on ``ldap://`` (for StartTLS) and ``ldaps://`` on 127.0.0.1, loads the argon2,
pw-sha2 and ppolicy modules, and holds a service account that may write ``userPassword`` under
``ou=people`` but not under ``ou=admins``. It runs in the foreground (``-d 0``) so the test
process owns it, and is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import free_port

SLAPD = Path("/usr/sbin/slapd")
LDAPWHOAMI = Path("/usr/bin/ldapwhoami")
MODULES = Path("/usr/lib/ldap")

BASE_DN = "dc=corp,dc=example"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
SERVICE_DN = f"cn=pcns,ou=services,{BASE_DN}"
SERVICE_PASSWORD = "service-Secret-1"
PEOPLE = f"ou=people,{BASE_DN}"
ADMINS = f"ou=admins,{BASE_DN}"
STRICT_POLICY = f"cn=strict,ou=policies,{BASE_DN}"
STRICT_MIN_LENGTH = 24


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate and a server certificate for 127.0.0.1 (only), signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_tls_files(directory: Path, common_name: str = "pcns test CA") -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            # Only the IP: tests connect to ldaps://localhost to see a host-name mismatch refused.
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(_pem_key(server_key))
    files.key_file.chmod(0o600)
    return files


_ACCESS = f"""\
access to dn.subtree="{ADMINS}" attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to attrs=userPassword
    by dn.exact="{SERVICE_DN}" write
    by self write
    by anonymous auth
    by * none
access to * by * read
"""


def _b64(value: str | bytes) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def escape_rdn_value(value: str) -> str:
    """``value`` escaped for an RDN (RFC 4514): specials, and a leading '#' or space."""
    escaped = "".join("\\" + c if c in '\\,+"<>;=' else c for c in value)
    escaped = escaped.replace("\0", "\\00")
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return escaped


class Slapd:
    """One slapd process on ``directory``; ``start`` again after ``stop`` keeps the data."""

    def __init__(self, directory: Path, tls: TlsFiles) -> None:
        self.directory = directory
        self.tls = tls
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def _write_config(self) -> Path:
        config = self.directory / "slapd.conf"
        (self.directory / "db").mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath {MODULES}
moduleload back_mdb
moduleload argon2
moduleload pw-sha2
moduleload ppolicy
pidfile {self.directory / "slapd.pid"}
argsfile {self.directory / "slapd.args"}
TLSCACertificateFile {self.tls.ca_file}
TLSCertificateFile {self.tls.cert_file}
TLSCertificateKeyFile {self.tls.key_file}
password-hash {{ARGON2}}
database mdb
maxsize 104857600
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {self.directory / "db"}
overlay ppolicy
{_ACCESS}"""
        )
        return config

    def start(self) -> None:
        """Start slapd and wait until it accepts connections on both ports."""
        config = self._write_config()
        log = (self.directory / "slapd.log").open("ab")
        with log:
            self._process = subprocess.Popen(
                [
                    str(SLAPD),
                    "-f",
                    str(config),
                    "-h",
                    f"{self.ldap_url}/ {self.ldaps_url}/",
                    "-d",
                    "0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = (self.directory / "slapd.log").read_text(errors="replace")
                self._process = None
                raise RuntimeError(f"slapd exited at start:\n{output[-3000:]}")
            if self._accepts(self.ldap_port) and self._accepts(self.ldaps_port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("slapd did not listen within 15 s")

    @staticmethod
    def _accepts(port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    def stop(self) -> None:
        """SIGTERM slapd by its pid (it does not fork with ``-d``) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # in case a test paused it
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """SIGSTOP slapd: connections are still accepted by the kernel, but nothing answers."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def _admin_tool(self, tool: str, *args: str, stdin: bytes = b"") -> bytes:
        """Run an ldap-utils ``tool`` bound as the rootdn over loopback ``ldap://``."""
        password_file = self.directory / "admin.pw"
        if not password_file.exists():
            password_file.write_text(ADMIN_PASSWORD)
            password_file.chmod(0o600)
        result = subprocess.run(
            [tool, "-x", "-H", self.ldap_url, "-D", ADMIN_DN, "-y", str(password_file), *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def add(self, dn: str, attributes: dict[str, str | bytes | list[str]]) -> None:
        """Add one entry; every value is base64 in the LDIF, so any bytes are fine."""
        lines = [f"dn:: {_b64(dn)}"]
        for name, value in attributes.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{name}:: {_b64(item)}")
        self._admin_tool("ldapadd", stdin=("\n".join(lines) + "\n").encode())

    def populate(self) -> None:
        """The base, the ou's, the service account and a strict password policy."""
        self.add(BASE_DN, {"objectClass": ["dcObject", "organization"], "dc": "corp", "o": "Corp"})
        for ou in ("people", "admins", "services", "policies"):
            self.add(f"ou={ou},{BASE_DN}", {"objectClass": "organizationalUnit", "ou": ou})
        self.add(
            SERVICE_DN,
            {
                "objectClass": "person",
                "cn": "pcns",
                "sn": "service",
                "userPassword": SERVICE_PASSWORD,
            },
        )
        self.add(
            STRICT_POLICY,
            {
                "objectClass": ["organizationalRole", "pwdPolicy"],
                "cn": "strict",
                "pwdAttribute": "userPassword",
                "pwdMinLength": str(STRICT_MIN_LENGTH),
                "pwdCheckQuality": "2",
            },
        )

    def add_user(
        self,
        uid: str,
        password: str,
        *,
        parent: str = PEOPLE,
        sn: str = "User",
        policy: str | None = None,
    ) -> str:
        """Add an inetOrgPerson ``uid=<uid>,<parent>`` and return its DN."""
        dn = f"uid={escape_rdn_value(uid)},{parent}"
        attributes: dict[str, str | bytes | list[str]] = {
            "objectClass": "inetOrgPerson",
            "uid": uid,
            "cn": uid,
            "sn": sn,
            "userPassword": password,
        }
        if policy is not None:
            attributes["pwdPolicySubentry"] = policy
        self.add(dn, attributes)
        return dn

    def read(self, dn: str, attribute: str) -> list[bytes]:
        """The raw values of ``attribute`` of ``dn``, as the rootdn reads them (``ldapsearch``)."""
        out = self._admin_tool(
            "ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-s", "base", "-b", dn, attribute
        )
        values: list[bytes] = []
        prefix = attribute.lower()
        for line in out.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() != prefix:
                continue
            if value.startswith(": "):
                values.append(base64.b64decode(value[2:]))
            else:
                values.append(value.removeprefix(" ").encode())
        return values

    async def whoami(self, dn: str, password: str, *, start_tls: bool = True) -> bool:
        """Whether ``ldapwhoami`` (libldap, not ldap3) binds as ``dn`` with ``password``.

        The password goes through a private file (``-y``), never argv.
        """
        secret = self.directory / f"whoami-{os.getpid()}-{time.monotonic_ns()}"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(password.encode("utf-8"))
        url = self.ldap_url if start_tls else self.ldaps_url
        args = [str(LDAPWHOAMI), "-x", "-H", url, "-D", dn, "-y", str(secret)]
        if start_tls:
            args.append("-ZZ")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LDAPTLS_CACERT": str(self.tls.ca_file),
            "LDAPTLS_REQCERT": "demand",
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *args,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await process.communicate()
        finally:
            secret.unlink()
        if process.returncode == 0:
            assert out.startswith(b"dn:"), out
            return True
        if b"Invalid credentials (49)" in err:
            return False
        raise AssertionError(f"ldapwhoami failed unexpectedly: {err.decode(errors='replace')}")
