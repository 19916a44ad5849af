"""Map an EC2 error (code, HTTP status) to the typed errors of base.py. Pure."""

from __future__ import annotations

from . import errors
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

THROTTLING_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
SERVER_CODES = frozenset({
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
    "RequestTimeout", "RequestTimeoutException",
})
# The instance type's ENI / IP limits, and the region's ENI quota.
QUOTA_CODES = frozenset({
    "PrivateIpAddressLimitExceeded", "AttachmentLimitExceeded",
    "NetworkInterfaceLimitExceeded", "InterfaceLimitExceeded",
    "SecurityGroupsPerInterfaceLimitExceeded",
})
VSWITCH_EXHAUSTED_CODES = frozenset({"InsufficientFreeAddressesInSubnet"})
STATE_CODES = frozenset({
    "IncorrectState", "IncorrectInstanceState", "InvalidNetworkInterface.InUse",
    "InvalidAttachment.InUse", "OperationNotPermitted", "ConcurrentTagAccess",
})
AUTH_CODES = frozenset({
    "AuthFailure", "UnauthorizedOperation", "SignatureDoesNotMatch", "RequestExpired",
    "InvalidClientTokenId", "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
    "MissingAuthenticationToken", "IncompleteSignature", "ExpiredToken",
    "ExpiredTokenException", "InvalidAccessKeyId", "OptInRequired", "Blocked",
    "AccessDenied", "AccessDeniedException",
})
PARAMETER_CODES = frozenset({
    "InvalidParameterValue", "InvalidParameterCombination", "InvalidParameter",
    "MissingParameter", "UnknownParameter", "InvalidAction", "ValidationError",
    "IdempotentParameterMismatch", "InvalidInstanceType", "InvalidFilter",
    "InvalidPaginationToken", "InvalidNextToken",
})


def error_class(code: str, status: int | None) -> type[CloudError]:
    """The typed error for an EC2 error code; unknown codes fall back on the HTTP status.
    ``Invalid<Thing>ID.NotFound`` and ``Invalid<Thing>.NotFound`` are NotFound;
    ``Invalid<Thing>ID.Malformed`` and other ``Invalid*`` codes are InvalidParameter."""
    if code in THROTTLING_CODES:
        return Throttled
    if code in VSWITCH_EXHAUSTED_CODES:
        return VSwitchExhausted
    if code in QUOTA_CODES:
        return QuotaExceeded
    if code in STATE_CODES:
        return InvalidState
    if code in AUTH_CODES:
        return Unauthorized
    if code in SERVER_CODES:
        return ServerError
    if code.endswith(".NotFound"):
        return NotFound
    if code in PARAMETER_CODES or code.startswith(("Invalid", "Missing")):
        return InvalidParameter
    if status is not None and status >= 500:
        return ServerError
    if status == 429:
        return Throttled
    if status in (401, 403):
        return Unauthorized
    return CloudError


def make_error(code: str, message: str, status: int | None = None, request_id: str = "",
               api: str = "") -> CloudError:
    return errors.make_error(code, message, status, request_id, api, classify=error_class)
