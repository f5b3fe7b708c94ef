"""The TLS inspection CA and the leaf certificates it signs (``cryptography``, no
shelling out).

- :func:`generate` writes ``ca.crt`` and ``ca.key`` (mode 0600): ECDSA P-256, ten years,
  ``CA:TRUE, pathlen:0``, keyCertSign/cRLSign, subject key identifier.  ``qpxd gen-ca``
  and, when the directory has none yet, ``qpxd run`` call it.
- :func:`load` reads them back and refuses a key that does not match the certificate or
  that other users can read (it signs certificates for any site).
- :class:`LeafStore` hands out an ``ssl.SSLContext`` serving a leaf certificate for a
  host: from a per-worker LRU, else from the disk cache (``<dir>/<CA fingerprint>/
  <host>.pem``, written atomically, reused by every worker and after restarts), else
  generated (ECDSA P-256, 90 days) on the hub's thread pool so other connections are not
  held up.  An unwritable cache directory falls back to memory with one warning.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import stat
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass

from . import log

CA_CERT, CA_KEY = "ca.crt", "ca.key"
LEAF_DAYS = 90
LRU_SIZE = 1024


class CaError(ValueError):
    """A CA that cannot be used; the message names the file."""


def _crypto():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: str, data: bytes) -> None:
    """Atomically, mode 0600 from the start."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, CA_CERT)) or \
        os.path.exists(os.path.join(directory, CA_KEY))


def generate(directory: str, force: bool = False) -> tuple[str, str]:
    """Write a new CA into ``directory``; refuses to replace one unless ``force``."""
    x509, hashes, serialization, ec, _, NameOID = _crypto()
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    if exists(directory) and not force:
        raise CaError(f"{directory} already holds a CA ({CA_CERT}/{CA_KEY}); "
                      "use --force to replace it")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qpxd inspection CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qpxd")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@dataclass
class CA:
    cert_path: str
    cert: object
    key: object
    fingerprint: str  # sha256 of the DER certificate, hex


def load(directory: str) -> CA:
    x509, _, serialization, _, _, _ = _crypto()
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        raise CaError(f"cannot read {cert_path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CaError(f"{cert_path} is not a PEM certificate: {e}") from None
    try:
        mode = os.stat(key_path).st_mode
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise CaError(f"cannot read {key_path}: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise CaError(f"{key_path} is not an unencrypted PEM private key: {e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CaError(f"{key_path} is readable by others (mode {stat.S_IMODE(mode):04o}): "
                      f"it signs certificates for any site; chmod 600 {key_path}")
    pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*pub) != key.public_key().public_bytes(*pub):
        raise CaError(f"the key {key_path} does not match the certificate {cert_path}")
    der = cert.public_bytes(serialization.Encoding.DER)
    return CA(cert_path, cert, key, hashlib.sha256(der).hexdigest())


def issue_leaf(ca: CA, host: str) -> bytes:
    """PEM of a new leaf certificate (chain: leaf, CA) and its key, for ``host``."""
    x509, hashes, serialization, ec, EKU, NameOID = _crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM)
            + ca.cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))


def _safe_name(host: str) -> str:
    ok = all(c.isalnum() or c in "-._" for c in host) and not host.startswith(".")
    return host if ok and len(host) < 200 else hashlib.sha256(host.encode()).hexdigest()


class LeafStore:
    """Server contexts for inspected hosts (see the module docstring).  ``stats``
    counts ``generated``, ``disk`` and ``memory`` hits."""

    def __init__(self, ca: CA, cache_dir: str):
        self.ca = ca
        self.dir = os.path.join(cache_dir, ca.fingerprint[:16])
        self.lru: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self.stats = {"generated": 0, "disk": 0, "memory": 0}
        self.lock = threading.Lock()
        self.disk_ok = True
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            probe = os.path.join(self.dir, ".probe")
            _write_private(probe, b"")
            os.unlink(probe)
        except OSError as e:
            self.disk_ok = False
            log.log(logging.WARNING, "leaf certificate cache not writable; keeping leaves "
                    "in memory only", path=self.dir, error=e.strerror or str(e))

    def context(self, host: str) -> tuple[ssl.SSLContext, str]:
        """The context for ``host`` and where it came from ("memory", "disk",
        "generated"); blocking: call it on the thread pool."""
        host = host.lower().rstrip(".")
        with self.lock:
            ctx = self.lru.get(host)
            if ctx is not None:
                self.lru.move_to_end(host)
                self.stats["memory"] += 1
                return ctx, "memory"
        path = os.path.join(self.dir, _safe_name(host) + ".pem")
        ctx = self._from_disk(path) if self.disk_ok else None
        kind = "disk"
        if ctx is None:
            ctx = self._context(issue_leaf(self.ca, host), path)
            kind = "generated"
        self.stats[kind] += 1
        with self.lock:
            self.lru[host] = ctx
            if len(self.lru) > LRU_SIZE:
                self.lru.popitem(last=False)
        return ctx, kind

    def _from_disk(self, path: str) -> ssl.SSLContext | None:
        try:
            if os.stat(path).st_mtime < _now().timestamp() - (LEAF_DAYS - 7) * 86400:
                return None  # close to expiry: make a fresh one
            return _server_context(path)
        except (OSError, ssl.SSLError):
            return None

    def _context(self, pem: bytes, path: str) -> ssl.SSLContext:
        if self.disk_ok:
            try:
                _write_private(path, pem)
                return _server_context(path)
            except OSError:
                pass
        fd, tmp = tempfile.mkstemp(prefix="qpxd-leaf-")
        try:
            os.write(fd, pem)
            os.close(fd)
            return _server_context(tmp)
        finally:
            os.unlink(tmp)


def _server_context(pem_path: str) -> ssl.SSLContext:
    from .tlsconn import TlsSocket
    from .tlsctx import TLS12_CIPHERS

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslsocket_class = TlsSocket
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ctx.load_cert_chain(pem_path)
    return ctx
