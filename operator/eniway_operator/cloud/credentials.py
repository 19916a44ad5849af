"""Where the Alibaba Cloud AccessKey comes from: the environment, a mounted Secret, or the
instance's RAM role through the metadata service (temporary STS keys, refreshed before
they expire). Each source is an object the SDK asks on every call (``get_credential``)."""

from __future__ import annotations

import calendar
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alibabacloud_credentials.models import CredentialModel

ENV_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
ENV_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"
DEFAULT_METADATA_URL = "http://100.100.100.200"
# File names accepted in a mounted Secret, first match wins.
SECRET_ID_FILES = ("access-key-id", "accessKeyId", "access_key_id", ENV_ID)
SECRET_KEY_FILES = ("access-key-secret", "accessKeySecret", "access_key_secret", ENV_SECRET)
SECRET_TOKEN_FILES = ("security-token", "securityToken", ENV_TOKEN)


class CredentialsError(RuntimeError):
    pass


def _model(ak: str, secret: str, token: str, provider: str) -> CredentialModel:
    return CredentialModel(access_key_id=ak, access_key_secret=secret,
                           security_token=token or None,
                           type="sts" if token else "access_key", provider_name=provider)


class StaticCredentials:
    def __init__(self, access_key_id: str, access_key_secret: str, security_token: str = ""
                 ) -> None:
        if not access_key_id or not access_key_secret:
            raise CredentialsError("empty AccessKey")
        self._m = _model(access_key_id, access_key_secret, security_token, "static")

    def get_credential(self) -> CredentialModel:
        return self._m


def from_env(env: Mapping[str, str] | None = None) -> StaticCredentials | None:
    env = os.environ if env is None else env
    if env.get(ENV_ID) and env.get(ENV_SECRET):
        return StaticCredentials(env[ENV_ID], env[ENV_SECRET], env.get(ENV_TOKEN, ""))
    return None


class SecretFileCredentials:
    """A Kubernetes Secret mounted as a directory; re-read when its files change, so a
    rotated key is picked up without a restart."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] = ()
        self._m: CredentialModel | None = None
        self.get_credential()

    def _find(self, names: tuple[str, ...]) -> Path | None:
        for n in names:
            p = self.dir / n
            if p.is_file():
                return p
        return None

    def get_credential(self) -> CredentialModel:
        files = [self._find(SECRET_ID_FILES), self._find(SECRET_KEY_FILES),
                 self._find(SECRET_TOKEN_FILES)]
        if files[0] is None or files[1] is None:
            raise CredentialsError(f"{self.dir}: no access key id / secret files")
        # kubelet rotates a mounted Secret by swapping a symlink to new files: follow it
        # and compare the files' identity, not only their times.
        stats = [p.stat() if p else None for p in files]
        stamp = tuple(x for st in stats for x in ((st.st_ino, st.st_mtime_ns, st.st_size)
                                                  if st else (0, 0, 0)))
        with self._lock:
            if self._m is None or stamp != self._stamp:
                ak, secret, token = (p.read_text().strip() if p else "" for p in files)
                self._m = _model(ak, secret, token, "secret")
                self._stamp = stamp
            return self._m


def _parse_time(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


class RamRoleCredentials:
    """STS keys of the instance's RAM role, from ``<metadata_url>/latest/meta-data/ram/
    security-credentials/<role>``; refreshed ``refresh_before`` seconds before expiry (or
    at 80% of their lifetime if that is sooner)."""

    def __init__(self, metadata_url: str = DEFAULT_METADATA_URL, role_name: str = "",
                 refresh_before: float = 300.0, timeout: float = 5.0,
                 fetch: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.base = metadata_url.rstrip("/") + "/latest/meta-data/ram/security-credentials/"
        self.role = role_name
        self.refresh_before = refresh_before
        self.timeout = timeout
        self._fetch = fetch or self._http_get
        self._clock = clock
        self._lock = threading.Lock()
        self._m: CredentialModel | None = None
        self._refresh_at = 0.0

    def _http_get(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=self.timeout) as resp:
            return resp.read().decode()

    def _refresh(self) -> None:
        if not self.role:
            roles = self._fetch(self.base).split()
            if not roles:
                raise CredentialsError("the instance has no RAM role")
            self.role = roles[0]
        doc: dict[str, Any] = json.loads(self._fetch(self.base + self.role))
        if doc.get("Code") != "Success":
            raise CredentialsError(f"RAM role {self.role}: {doc.get('Code')}")
        now = self._clock()
        expires = _parse_time(doc["Expiration"])
        life = max(0.0, expires - now)
        self._refresh_at = now + max(0.0, min(life - self.refresh_before, life * 0.8))
        self._m = _model(doc["AccessKeyId"], doc["AccessKeySecret"], doc["SecurityToken"],
                         "ram_role")

    def get_credential(self) -> CredentialModel:
        with self._lock:
            if self._m is None or self._clock() >= self._refresh_at:
                try:
                    self._refresh()
                except Exception as e:
                    if self._m is None:
                        raise CredentialsError(f"RAM role credentials: {e}") from e
            assert self._m is not None
            return self._m


Credentials = StaticCredentials | SecretFileCredentials | RamRoleCredentials


def resolve(secret_dir: str = "", metadata_url: str = DEFAULT_METADATA_URL,
            role_name: str = "", env: Mapping[str, str] | None = None) -> Credentials:
    """The first source that has credentials: env, then the mounted Secret, then the
    RAM role (asked lazily, on the first call)."""
    c = from_env(env)
    if c is not None:
        return c
    if secret_dir and Path(secret_dir).is_dir():
        try:
            return SecretFileCredentials(secret_dir)
        except CredentialsError:
            pass
    return RamRoleCredentials(metadata_url, role_name)
