"""Checks AWS Signature Version 4 on EC2 Query requests (what botocore signs), against
the emulator's access keys (the same store the Alibaba dialect uses, signing.Verifier)
and the temporary keys the EC2 metadata service hands to an instance's IAM role (their
session token must come along in X-Amz-Security-Token).

Scope: <date>/<the emulator's EC2 region>/ec2/aws4_request. X-Amz-Date must be within
``SKEW`` of the emulator's clock: "RequestExpired: The request reached the service more
than 15 minutes after the date stamp on the request ... or the date stamp on the request
is more than 15 minutes in the future" (EC2 API Reference, Common Error Types)."""

from __future__ import annotations

import hashlib
import hmac
import time
from calendar import timegm
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from .engine import EcsError
from .signing import Verifier

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "ec2"
SKEW = 15 * 60.0


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    k = _hmac(("AWS4" + secret).encode(), date)
    return _hmac(_hmac(_hmac(k, region), service), "aws4_request")


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    quoted = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in quoted)


def string_to_sign(method: str, path: str, query: Sequence[tuple[str, str]],
                   headers: Mapping[str, str], signed: Sequence[str], payload_hash: str,
                   amz_date: str, scope: str) -> str:
    canon_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join([method, quote(path or "/", safe="/~"), canonical_query(query),
                           canon_headers, ";".join(signed), payload_hash])
    return "\n".join([ALGORITHM, amz_date, scope,
                      hashlib.sha256(canonical.encode()).hexdigest()])


def verify(verifier: Verifier, region: str, method: str, path: str,
           query: Sequence[tuple[str, str]], headers: Mapping[str, str], body: bytes,
           now: float | None = None) -> str:
    """The access key id that signed the request (``headers`` lower-cased), or EcsError
    with EC2's code. With checking disabled, the key the request names, unchecked."""
    auth = headers.get("authorization", "")
    fields: dict[str, str] = {}
    if auth.startswith(ALGORITHM + " "):
        for part in auth[len(ALGORITHM) + 1:].split(","):
            k, sep, v = part.strip().partition("=")
            if sep:
                fields[k] = v
    credential = fields.get("Credential", "").split("/")
    ak = credential[0]
    if not verifier.enabled:
        return ak
    if not auth:
        raise EcsError(401, "MissingAuthenticationToken", "The request must contain either "
                       "a valid (registered) AWS access key ID or X.509 certificate.")
    if not fields or len(credential) != 5 or "Signature" not in fields \
            or "SignedHeaders" not in fields:
        raise EcsError(400, "IncompleteSignature",
                       f"The request signature does not conform to AWS standards "
                       f"({ALGORITHM} with Credential, SignedHeaders and Signature).")
    secret = verifier.keys.get(ak)
    sts = verifier.sts.get(ak)
    if secret is None and sts is not None:
        if sts.expires < time.time():
            raise EcsError(400, "RequestExpired", "The security token included in the "
                           "request is expired.")
        if not hmac.compare_digest(headers.get("x-amz-security-token", ""), sts.token):
            raise EcsError(401, "AuthFailure", "The security token included in the request "
                           "is invalid.")
        secret = sts.secret
    if secret is None:
        raise EcsError(401, "AuthFailure",
                       "AWS was not able to validate the provided access credentials.")
    date, scope_region, service, terminator = credential[1:]
    if scope_region != region or service != SERVICE or terminator != "aws4_request":
        raise EcsError(401, "AuthFailure", f"Credential should be scoped to a valid region "
                       f"and service ({region}/{SERVICE}), not '{scope_region}/{service}'.")
    signed = [h for h in fields["SignedHeaders"].split(";") if h]
    for required in ("host", "x-amz-date"):
        if required not in signed:
            raise EcsError(400, "IncompleteSignature", f"{required} must be signed.")
    amz_date = headers.get("x-amz-date", "")
    payload_hash = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    scope = "/".join(credential[1:])
    text = string_to_sign(method, path, query, headers, signed, payload_hash, amz_date, scope)
    expected = hmac.new(signing_key(secret, date, scope_region), text.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise EcsError(403, "SignatureDoesNotMatch", "The request signature we calculated "
                       "does not match the signature you provided. Check your AWS Secret "
                       "Access Key and signing method.")
    try:
        stamp = float(timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise EcsError(400, "IncompleteSignature",
                       f"X-Amz-Date {amz_date!r} is not yyyyMMddTHHmmssZ.") from None
    if not amz_date.startswith(date):
        raise EcsError(403, "SignatureDoesNotMatch",
                       "The credential scope's date is not X-Amz-Date's.")
    if abs((now if now is not None else verifier.clock()) - stamp) > SKEW:
        raise EcsError(400, "RequestExpired", f"Request has expired: X-Amz-Date {amz_date} "
                       f"is more than {int(SKEW // 60)} minutes from the server's clock.")
    return ak
