"""Map an ECS error (code, HTTP status) to the typed errors of base.py. Pure."""

from __future__ import annotations

from collections.abc import Callable

from .base import (
    CloudError,
    InvalidParameter,
    InvalidState,
    NotFound,
    QuotaExceeded,
    ServerError,
    Throttled,
    Unauthorized,
    VSwitchExhausted,
)

THROTTLING_CODES = frozenset({
    "Throttling", "Throttling.User", "Throttling.Api", "Throttling.Resource",
    "RequestLimitExceeded", "ServiceUnavailable.Throttling",
})
SERVER_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "UnknownError", "InternalError.Timeout",
    "SignatureNonceUsed",  # a replayed nonce: the next attempt is signed with a new one
})
# ECS documents QuotaExceeded.PrivateIpAddress as "Don't have enough private IPs in this
# switch", and Terway block-lists the vSwitch on it as on InvalidVSwitchId.IpNotEnough.
VSWITCH_EXHAUSTED_CODES = frozenset({
    "InvalidVSwitchId.IpNotEnough", "QuotaExceeded.PrivateIpAddress", "QuotaExceeded.IpAddress",
})
# Limits: the region's ENI quota, the instance type's ENIs and IPs per ENI.
QUOTA_CODES = frozenset({
    "EniPerInstanceLimitExceeded", "MaxEniCountExceeded", "QuotaExceeded.Eni",
    "InvalidOperation.EniCountExceeded", "InvalidOperation.Ipv4CountExceeded",
    "InvalidOperation.Ipv6CountExceeded", "MaxEniPrivateIpsCountExceeded",
    "MaxEniIpv6IpsCountExceeded", "SecurityGroupInstanceLimitExceed",
})
# The configuration asks for something ECS never allows (e.g. six security groups).
CONFIG_CODES = frozenset({"JoinedGroupLimitExceed"})
STATE_CODES = frozenset({
    "IncorrectInstanceStatus", "IncorrectStatus", "InvalidOperation.InvalidEniState",
    "InvalidOperation.InvalidEcsState", "Operation.Conflict", "IncorrectEniStatus",
    "InvalidOperation.Conflict", "LastTokenProcessing",
    # VPC (EIPs): the EIP is in transit or not where the call expects it; the ENI carrying
    # an EIP cannot lose that IP yet.
    "IncorrectEipStatus", "InvalidBindingStatus", "InvalidAssociation.Duplicated",
    "InvalidOperation.EipAssociated", "OperationConflict",
})
AUTH_CODES = frozenset({
    "SignatureDoesNotMatch", "InvalidAccessKeyId.NotFound", "InvalidAccessKeyId.Inactive",
    "InvalidSecurityToken.Expired", "InvalidSecurityToken.Malformed",
    "InvalidSecurityToken.MismatchWithAccessKey", "Forbidden.RAM", "Forbidden",
    "Forbidden.SubUser", "NoPermission", "MissingSecurityToken", "InvalidCredentials",
    "IncompleteSignature", "InvalidTimeStamp.Expired",  # the clock is off by minutes
})


def error_class(code: str, status: int | None) -> type[CloudError]:
    """The typed error for an ECS error code; unknown codes fall back on the HTTP status."""
    if code in THROTTLING_CODES or code.startswith("Throttling"):
        return Throttled
    if code in VSWITCH_EXHAUSTED_CODES:
        return VSwitchExhausted
    if code in QUOTA_CODES or code.startswith(("QuotaExceed", "QuotaExceeded")):
        return QuotaExceeded
    if code in STATE_CODES:
        return InvalidState
    if code in CONFIG_CODES:
        return InvalidParameter
    if code in AUTH_CODES:
        return Unauthorized
    if code in SERVER_CODES:
        return ServerError
    if code.endswith(".NotFound") or code in ("InvalidEniId.NotFound", "InvalidIp.IpUnassigned"):
        return NotFound
    if status is not None and status >= 500:
        return ServerError
    if code.startswith(("Invalid", "Missing", "IdempotentParameterMismatch", "Unsupported")):
        return InvalidParameter
    if status == 429:
        return Throttled
    return CloudError


def make_error(code: str, message: str, status: int | None = None, request_id: str = "",
               api: str = "",
               classify: Callable[[str, int | None], type[CloudError]] | None = None
               ) -> CloudError:
    """The typed error; ``classify`` is another cloud's mapping (default: ECS's)."""
    cls = (classify or error_class)(code, status)
    err = cls(code, message, request_id=request_id, api=api)
    err.status = status
    return err
