"""A real, throw-away RFC 3161 authority for tests: ``openssl ts -reply`` behind HTTP on 127.0.0.1.

Certificates are made with ``cryptography`` (so tests can choose validity windows); each request
body is piped to ``openssl ts -reply`` and its DER reply returned as ``application/timestamp-reply``.
"""

from __future__ import annotations

import datetime as dt
import http.server
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OPENSSL_TIMEOUT = 10


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Authority:
    """Files of one throw-away authority: CA, TSA certificate and key, openssl config."""

    directory: Path
    ca_pem: Path
    tsa_pem: Path
    chain_pem: Path
    config: Path


def make_authority(directory: Path, name: str = "Test TSA", tsa_valid: tuple[dt.datetime, dt.datetime] | None = None) -> Authority:
    """Create a CA and a time-stamping certificate under ``directory`` (TSA validity optional)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} Root CA"))
        .issuer_name(_name(f"{name} Root CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    not_before, not_after = tsa_valid or (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    tsa = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(tsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    auth = Authority(
        directory=directory,
        ca_pem=directory / "ca.pem",
        tsa_pem=directory / "tsa.pem",
        chain_pem=directory / "chain.pem",
        config=directory / "tsa.cnf",
    )
    auth.ca_pem.write_bytes(_pem(ca))
    auth.tsa_pem.write_bytes(_pem(tsa))
    auth.chain_pem.write_bytes(_pem(tsa) + _pem(ca))
    (directory / "tsa.key").write_bytes(
        tsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "serial").write_text("01\n")
    auth.config.write_text(
        "[tsa]\ndefault_tsa = tsa_config1\n\n[tsa_config1]\n"
        f"dir = {directory}\n"
        "serial = $dir/serial\n"
        "crypto_device = builtin\n"
        "signer_cert = $dir/tsa.pem\n"
        "signer_key = $dir/tsa.key\n"
        "signer_digest = sha256\n"
        "default_policy = 1.2.3.4.1\n"
        "other_policies = 1.2.3.4.5.6\n"
        "digests = sha256, sha384, sha512\n"
        "accuracy = secs:1, millisecs:500, microsecs:100\n"
        "clock_precision_digits = 0\n"
        "ordering = yes\n"
        "tsa_name = yes\n"
        "ess_cert_id_chain = no\n"
        "ess_cert_id_alg = sha256\n"
    )
    return auth


class _Handler(http.server.BaseHTTPRequestHandler):
    authority: Authority

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = self.authority.directory / f"req-{threading.get_ident()}.tsq"
        request.write_bytes(body)
        proc = subprocess.run(
            ["openssl", "ts", "-reply", "-config", str(self.authority.config), "-queryfile", str(request)],
            capture_output=True,
            timeout=OPENSSL_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0 or not proc.stdout:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(proc.stderr)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/timestamp-reply")
        self.send_header("Content-Length", str(len(proc.stdout)))
        self.end_headers()
        self.wfile.write(proc.stdout)

    def log_message(self, *args: object) -> None:
        pass


class LocalTSA:
    """An HTTP time-stamp authority on 127.0.0.1 (ephemeral port) serving ``authority``."""

    def __init__(self, authority: Authority) -> None:
        handler = type("Handler", (_Handler,), {"authority": authority})
        self.authority = authority
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tsa"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalTSA":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
