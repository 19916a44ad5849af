#!/usr/bin/env bash
# Install everything the tests and the demo need on a fresh Debian bookworm machine:
# Debian packages, the Python distribution (editable, with test extras), and the
# control plane (built once, then cached in $ENIWAY_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

APT_PACKAGES=(
  iproute2 iptables nftables iputils-ping openssl procps psmisc patchelf
  etcd-server containernetworking-plugins
  golang-go dpkg-dev golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
  podman runc busybox-static golang-github-appc-cni-dev
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

stamp="${ENIWAY_CACHE:-$HOME/.cache/eniway}/pip-stamp"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
# Reinstall when pyproject changed or the installed package is another checkout's.
here="$(pwd -P)"
installed_from() {
  (cd / && "$PY" -c 'import os, eniway_operator; print(os.path.realpath(eniway_operator.__file__))' 2>/dev/null) || true
}
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" || "$(installed_from)" != "$here/"* ]]; then
  echo "[deps] pip install -e .[test]" >&2
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -e '^WARNING: Location' -e 'Running pip as the' >&2 || true
  [[ "$(installed_from)" == "$here/"* ]] || { echo "[deps] eniway is not importable from $here" >&2; exit 1; }
  mkdir -p "$(dirname "$stamp")" && echo "$want" > "$stamp"
fi

bash hack/build-control-plane.sh
