#!/usr/bin/env bash
# Install everything the tests and the demo need on a fresh Debian bookworm machine:
# Debian packages, a virtual environment ($VENV, default .venv) holding the Python
# distribution (editable, with test extras), the control plane and eniway's image (built
# once, then cached in $ENIWAY_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

APT_PACKAGES=(
  iproute2 iptables nftables iputils-ping openssl procps psmisc patchelf
  etcd-server containernetworking-plugins
  golang-go dpkg-dev golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
  podman runc busybox-static golang-github-appc-cni-dev
  containerd gcc libc6-dev
  mmdebstrap
  python3-venv
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == *"ok installed"* ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "[deps] apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project's virtual environment: Debian's python3 refuses `pip install` outside
# one (PEP 668), and a per-checkout environment keeps checkouts from sharing an install.
VENV="${VENV:-.venv}"
[[ "$VENV" == /* ]] || VENV="$PWD/$VENV"
VPY="$VENV/bin/python"
base_of() { "$1" -c 'import sys; print(sys.base_prefix)' 2>/dev/null || true; }
if [[ ! -x "$VPY" || "$(base_of "$VPY")" != "$(base_of "$PY")" ]]; then
  echo "[deps] creating $VENV from $(command -v "$PY") ($("$PY" --version 2>&1))" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || { echo "[deps] '$PY -m venv' failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi

stamp="$VENV/.eniway-stamp"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
here="$(pwd -P)"
installed_from() {
  (cd / && "$VPY" -c 'import os, eniway_operator; print(os.path.realpath(eniway_operator.__file__))' 2>/dev/null) || true
}
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" || "$(installed_from)" != "$here/"* ]]; then
  echo "[deps] pip install -e .[test,bench] into $VENV" >&2
  log="$VENV/pip-install.log"
  if ! "$VPY" -m pip install -q --disable-pip-version-check -e '.[test,bench]' >"$log" 2>&1; then
    cat "$log" >&2
    echo "[deps] pip install failed (log above, also in $log)" >&2
    exit 1
  fi
  [[ "$(installed_from)" == "$here/"* ]] || { echo "[deps] eniway is not importable from $here" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

PYTHON="$VPY" bash hack/build-control-plane.sh

# eniway's image without a registry (Debian packages + the pinned wheels), for the chart's
# pods on the real nodes; cached per inputs in $ENIWAY_CACHE/images.
# Only the chart's tests on real nodes need it: a failure is reported, and they fail with it.
"$VPY" hack/build_image.py >/dev/null || echo "[deps] WARNING: eniway's image was not built" >&2
