"""Checks the signature the official SDK puts on each call (ACS3-HMAC-SHA256, the v3
scheme), with static AccessKey pairs and the temporary STS keys the metadata service's RAM
role hands out.

A signed request cannot be replayed: its ``x-acs-date`` must be within ``REPLAY_WINDOW``
of the emulator's clock, and its ``x-acs-signature-nonce`` is remembered for that long, a
second use being refused with ``SignatureNonceUsed`` as ECS does. The SDK makes a new
nonce and date for every attempt, retries included."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import secrets
import threading
import time
from calendar import timegm
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from .engine import EcsError

ALGORITHM = "ACS3-HMAC-SHA256"
REPLAY_WINDOW = 15 * 60.0  # seconds a date may be off, and a nonce is remembered


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
    instance_id: str = ""  # the instance whose RAM role it was issued to


class Verifier:
    def __init__(self, keys: Mapping[str, str] | None = None, enabled: bool = True,
                 sts_ttl: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.keys = dict(keys or {})
        self.enabled = enabled
        self.sts_ttl = sts_ttl
        self.sts: dict[str, StsKey] = {}
        self.clock = clock
        self._nonces: dict[str, float] = {}  # nonce -> when it may be forgotten
        self._expiry: list[tuple[float, str]] = []  # heap of the same, oldest first
        self._lock = threading.Lock()

    def issue_sts(self, instance_id: str = "", aws: bool = False) -> tuple[str, StsKey]:
        """Temporary keys; ``aws`` gives them EC2's look (ASIA...) for an IAM role."""
        ak = "ASIA" + secrets.token_hex(8).upper() if aws else "STS." + secrets.token_hex(12)
        key = StsKey(secrets.token_urlsafe(24), secrets.token_urlsafe(48),
                     time.time() + self.sts_ttl, instance_id)
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
        self._check_fresh(headers.get("x-acs-date", ""), headers.get("x-acs-signature-nonce", ""))
        return ak

    def _check_fresh(self, date: str, nonce: str) -> None:
        """A genuine signature, but is it a replay? Checked after the signature, so only a
        request from a key holder can spend a nonce."""
        try:
            stamp = float(timegm(time.strptime(date, "%Y-%m-%dT%H:%M:%SZ")))
        except ValueError:
            raise EcsError(400, "InvalidTimeStamp.Format",
                           f"x-acs-date {date!r} is not yyyy-MM-ddTHH:mm:ssZ (UTC).") from None
        now = self.clock()
        if abs(now - stamp) > REPLAY_WINDOW:
            raise EcsError(400, "InvalidTimeStamp.Expired",
                           "Specified time stamp or date value is expired.")
        if not nonce:
            raise EcsError(400, "MissingParameter.SignatureNonce",
                           "The input parameter SignatureNonce is mandatory.")
        with self._lock:
            while self._expiry and self._expiry[0][0] <= now:  # dates gone stale anyway
                _, old = heapq.heappop(self._expiry)
                if self._nonces.get(old, now + 1) <= now:
                    del self._nonces[old]
            if nonce in self._nonces:
                raise EcsError(400, "SignatureNonceUsed",
                               "The request signature nonce has been used.")
            forget_at = stamp + REPLAY_WINDOW + 1.0  # its date is refused from then on
            self._nonces[nonce] = forget_at
            heapq.heappush(self._expiry, (forget_at, nonce))
