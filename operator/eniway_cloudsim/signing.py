"""Checks the signature the official SDK puts on each call (ACS3-HMAC-SHA256, the v3
scheme), with static AccessKey pairs and the temporary STS keys the metadata service's RAM
role hands out."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from .engine import EcsError

ALGORITHM = "ACS3-HMAC-SHA256"


def canonical_query(query: Mapping[str, str]) -> str:
    return "&".join(f"{k}={quote(query[k], safe='~')}" for k in sorted(query))


def string_to_sign(method: str, path: str, query: Mapping[str, str],
                   headers: Mapping[str, str], signed: list[str], payload_hash: str) -> str:
    canon_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed)
    canonical = "\n".join([method, path or "/", canonical_query(query), canon_headers,
                           ";".join(signed), payload_hash])
    return f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def sign(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


@dataclass
class StsKey:
    secret: str
    token: str
    expires: float


class Verifier:
    def __init__(self, keys: Mapping[str, str] | None = None, enabled: bool = True,
                 sts_ttl: float = 3600.0) -> None:
        self.keys = dict(keys or {})
        self.enabled = enabled
        self.sts_ttl = sts_ttl
        self.sts: dict[str, StsKey] = {}
        self._lock = threading.Lock()

    def issue_sts(self) -> tuple[str, StsKey]:
        ak = "STS." + secrets.token_hex(12)
        key = StsKey(secrets.token_urlsafe(24), secrets.token_urlsafe(48),
                     time.time() + self.sts_ttl)
        with self._lock:
            now = time.time()
            self.sts = {k: v for k, v in self.sts.items() if v.expires > now}
            self.sts[ak] = key
        return ak, key

    def verify(self, method: str, path: str, query: Mapping[str, str],
               headers: Mapping[str, str], body: bytes) -> str:
        """Checks the signature; returns the AccessKey id that signed (the caller). With
        checking disabled, the id the request names, unchecked ("" if none)."""
        auth = headers.get("authorization", "")
        signed_by_us = auth.startswith(ALGORITHM + " ")
        fields = dict(part.strip().split("=", 1) for part in auth[len(ALGORITHM) + 1:].split(",")
                      if "=" in part) if signed_by_us else {}
        ak = fields.get("Credential", "")
        if not self.enabled:
            return ak
        if not signed_by_us:
            raise EcsError(400, "IncompleteSignature",
                           f"The request must be signed with {ALGORITHM}.")
        signed = [h for h in fields.get("SignedHeaders", "").split(";") if h]
        given = fields.get("Signature", "")
        payload_hash = headers.get("x-acs-content-sha256", "")
        if payload_hash != hashlib.sha256(body).hexdigest():
            raise EcsError(400, "SignatureDoesNotMatch", "x-acs-content-sha256 mismatch.")
        with self._lock:
            secret = self.keys.get(ak)
            sts = self.sts.get(ak)
        if secret is None and sts is not None:
            if sts.expires < time.time():
                raise EcsError(400, "InvalidSecurityToken.Expired",
                               "The security token has expired.")
            if headers.get("x-acs-security-token") != sts.token:
                raise EcsError(400, "InvalidSecurityToken.MismatchWithAccessKey",
                               "The security token does not belong to the AccessKey.")
            secret = sts.secret
        if secret is None:
            raise EcsError(404, "InvalidAccessKeyId.NotFound",
                           f"Specified access key {ak!r} is not found.")
        for required in ("host", "x-acs-action", "x-acs-date", "x-acs-signature-nonce"):
            if required not in signed:
                raise EcsError(400, "IncompleteSignature", f"{required} must be signed.")
        expected = sign(secret, string_to_sign(method, path, query, headers, signed,
                                               payload_hash))
        if not hmac.compare_digest(expected, given):
            raise EcsError(400, "SignatureDoesNotMatch",
                           "The request signature does not conform to Aliyun standards.")
        return ak
