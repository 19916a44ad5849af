"""TLS of the admission webhook: a CA made at start and a serving certificate it signs, and
the caBundle that trusts every replica's CA.

Each replica makes its own CA (nothing is stored: no Secret to read or rotate); the
MutatingWebhookConfiguration's caBundle holds the CAs of the replicas that serve, so the
API server trusts whichever one the Service picks. A replica adds its CA to the bundle and
keeps only the newest few, so CAs of replicas long gone drop out.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)  # the CA lives as long as the process that made it
BUNDLE_KEEP = 4  # CAs in the bundle: the serving replicas', and a few recently restarted
_BEGIN = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class ServingTls:
    ca_pem: bytes
    cert_pem: bytes  # the serving certificate, then the CA
    key_pem: bytes


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in dict.fromkeys(n.strip() for n in names if n.strip()):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def make_serving_tls(names: Sequence[str], now: datetime.datetime | None = None) -> ServingTls:
    """A fresh CA and a certificate for ``names`` (DNS names or IP addresses) it signs."""
    if not _san(names):
        raise ValueError("the webhook certificate needs at least one DNS name or IP address")
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"eniway-webhook-ca-{now.strftime('%Y%m%dT%H%M%S.%f')}")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("eniway-webhook")).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    return ServingTls(ca_pem, cert.public_bytes(pem) + ca_pem, key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def split_pem(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each as its own PEM block."""
    return [_BEGIN + part.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
            for part in bundle.split(_BEGIN)[1:] if b"-----END CERTIFICATE-----" in part]


def merge_bundle(current: bytes, mine: bytes, keep: int = BUNDLE_KEEP) -> bytes:
    """``current`` with ``mine`` last (the newest), at most ``keep`` certificates."""
    own = split_pem(mine)
    others = [c for c in split_pem(current) if c not in own]
    return b"".join([*others, *own][-keep:])
