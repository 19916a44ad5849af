#!/usr/bin/env bash
# End-to-end install on a kind cluster, with eniway-cloudsim as the cloud.
#
# For machines WITH a Docker engine (and kind, kubectl, helm on PATH). It is NOT run in CI
# here: the CI machines have no Docker engine, so the test suite runs the real local control
# plane instead (tests/test_chart*.py, make demo).
#
#   hack/kind-e2e.sh            # build, create, install, check, delete everything
#   KEEP=1 hack/kind-e2e.sh     # leave the cluster and the emulator running to explore
#
# What it does:
#   1. builds the image (Dockerfile) and starts eniway-cloudsim from it on kind's Docker
#      network; creates a VPC, a vSwitch, a security group and one ECS instance per node
#      (three instance types, as a real cluster would have);
#   2. creates a kind cluster without a CNI whose kubelets report those instances as their
#      providerID ("<region>.<instance-id>", Alibaba's format), loads the image;
#   3. installs the chart with cloud.provider=cloudsim pointing at that emulator;
#   4. checks: the operator and agents roll out, the CNI binary the init container installed
#      runs on every node (the nodes have no Python: the bundled interpreter is used), every
#      node gets an ENIPool with its instance type's limits and warm ENIs InUse in the cloud.
#
# What it does not check: pod traffic. The emulator's VPC network (ENIs as veths, source
# checks) is built with network namespaces on one host (make demo, tests/); kind nodes are
# containers the emulator cannot plug ENIs into, so ENIs exist in the cloud and in the API
# but no ENI link appears inside the nodes.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-eniway-e2e}
REGION=${REGION:-cn-hangzhou}
ZONE=${ZONE:-cn-hangzhou-i}
NS=${NS:-eniway-system}
KEEP=${KEEP:-0}
TIMEOUT=${TIMEOUT:-300}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | sed -n 1p)
IMAGE=${IMAGE:-ghcr.io/eniway/eniway:${VERSION}}
SIM=${CLUSTER}-cloudsim
SIM_PORT=8765
# One instance type per node: control plane, then workers.
TYPES=(${TYPES:-ecs.g6.large ecs.c6.xlarge ecs.r6.xlarge})
WORK=$(mktemp -d)

log() { printf '\n[kind-e2e] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH"
done
docker info >/dev/null 2>&1 || die "no Docker engine reachable (this script needs one)"

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    log "diagnostics"
    kubectl -n "$NS" get pods -o wide 2>/dev/null || true
    kubectl -n "$NS" logs deploy/eniway-operator --tail=50 2>/dev/null || true
    docker logs --tail 50 "$SIM" 2>/dev/null || true
  fi
  if [[ $KEEP != 1 ]]; then
    log "cleaning up"
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    docker rm -f "$SIM" >/dev/null 2>&1 || true
  else
    log "kept: kind cluster $CLUSTER, container $SIM (KEEP=1)"
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

# Poll "$@" until it succeeds, at most TIMEOUT seconds.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out waiting for $what"
    sleep 3
  done
}

log "building $IMAGE"
docker build -t "$IMAGE" .

log "starting eniway-cloudsim on Docker network kind"
docker network inspect kind >/dev/null 2>&1 || docker network create kind >/dev/null
docker rm -f "$SIM" >/dev/null 2>&1 || true
# The admin API needs this token; docker exec below inherits it from the container.
SIM_ADMIN_TOKEN=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
docker run -d --name "$SIM" --network kind -e ENIWAY_CLOUDSIM_ADMIN_TOKEN="$SIM_ADMIN_TOKEN" \
  "$IMAGE" \
  eniway-cloudsim --listen "0.0.0.0:${SIM_PORT}" --region "$REGION" \
  --state /tmp/cloudsim.db --attach-delay 1 >/dev/null
wait_for "the emulator" docker exec "$SIM" python3 -c \
  "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${SIM_PORT}/admin/healthz')"
SIM_IP=$(docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$SIM")

log "creating the VPC and one instance per node (${TYPES[*]})"
# Prints one "<provider-id>" line per instance type given as arguments.
docker exec -i "$SIM" python3 - "$SIM_PORT" "$ZONE" "${TYPES[@]}" > "$WORK/provider-ids" <<'PY'
import sys

from eniway_cloudsim.admin import CloudSimAdmin

port, zone, types = sys.argv[1], sys.argv[2], sys.argv[3:]
admin = CloudSimAdmin(f"127.0.0.1:{port}")
topo = admin.bootstrap({zone: ["10.0.0.0/20"]}, vpc_cidr="10.0.0.0/16")
vswitch = topo.vswitch_ids(zone)[0]
for n, itype in enumerate(types):
    inst = admin.create_instance(itype, vswitch, [topo.security_group_id], name=f"node-{n}")
    print(inst["provider_id"])
PY
mapfile -t PIDS < "$WORK/provider-ids"
((${#PIDS[@]} == ${#TYPES[@]})) || die "expected ${#TYPES[@]} instances, got ${#PIDS[@]}"

log "creating kind cluster $CLUSTER (no default CNI)"
node_patch() {  # kind: InitConfiguration|JoinConfiguration, provider id, instance type
  cat <<EOF
  kubeadmConfigPatches:
  - |
    kind: $1
    nodeRegistration:
      kubeletExtraArgs:
        provider-id: "$2"
        node-labels: "node.kubernetes.io/instance-type=$3,topology.kubernetes.io/zone=${ZONE}"
EOF
}
{
  echo "kind: Cluster"
  echo "apiVersion: kind.x-k8s.io/v1alpha4"
  echo "networking: {disableDefaultCNI: true}"
  echo "nodes:"
  echo "- role: control-plane"
  node_patch InitConfiguration "${PIDS[0]}" "${TYPES[0]}"
  for i in $(seq 1 $((${#TYPES[@]} - 1))); do
    echo "- role: worker"
    node_patch JoinConfiguration "${PIDS[$i]}" "${TYPES[$i]}"
  done
} > "$WORK/kind.yaml"
kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --wait 0s
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the chart"
helm install eniway charts/eniway -n "$NS" --create-namespace \
  --set image.pullPolicy=Never \
  --set cloud.provider=cloudsim --set cloud.region="$REGION" \
  --set cloudsim.deploy=false --set cloud.endpoint="http://${SIM_IP}:${SIM_PORT}" \
  --set pool.min_pool_size=2 --set clusterId="$CLUSTER"

log "checking"
kubectl -n "$NS" rollout status deploy/eniway-operator --timeout="${TIMEOUT}s"
kubectl -n "$NS" rollout status ds/eniway-agent --timeout="${TIMEOUT}s"
for node in $(kind get nodes --name "$CLUSTER"); do
  out=$(docker exec "$node" sh -c 'CNI_COMMAND=VERSION /opt/cni/bin/eniway </dev/null')
  [[ $out == *supportedVersions* ]] || die "CNI binary does not run on $node: $out"
  echo "  $node: /opt/cni/bin/eniway runs ($(docker exec "$node" readlink /opt/eniway/python))"
done
nodes=${#TYPES[@]}
pools_ready() {  # every node's pool carries its instance type's limits
  [[ $(kubectl get enipools --no-headers \
        -o custom-columns=N:.metadata.name,MAX:.status.limits.maxPods |
       awk '$2 ~ /^[0-9]+$/ && $2 > 0' | wc -l) -eq $nodes ]]
}
wait_for "an ENIPool with limits for each of $nodes nodes" pools_ready
enis_in_use() {  # a secondary ENI (not the primary) attached and InUse on every node
  [[ $(kubectl get enis --no-headers \
        -o custom-columns=NODE:.spec.nodeName,PRIMARY:.spec.primary,PHASE:.status.phase |
       awk '$2 != "true" && $3 == "InUse" {print $1}' | sort -u | wc -l) -eq $nodes ]]
}
wait_for "a warm secondary ENI InUse on each node" enis_in_use
kubectl get enipools
kubectl get enis -o wide
log "OK: chart installed on kind; every node has its pool and warm ENIs from the emulator"
