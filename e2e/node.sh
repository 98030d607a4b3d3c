#!/usr/bin/env bash
# A throwaway single-node Kubernetes cluster that runs real pods, sealed in a network
# namespace of its own with no route out (only `lo` and the pod bridge): pod traffic
# cannot leave the machine.
#
#   e2e/node.sh up DIR              start it; writes DIR/env (see below). After a failed
#                                   `up`, `down DIR` removes what was started.
#   e2e/node.sh import DIR FILE...  import OCI image archives into the node's containerd
#   e2e/node.sh down DIR            stop everything, remove what it made, delete DIR
#   e2e/node.sh census              print what teardown must leave as it found it
#   e2e/node.sh prereqs             check root and install the OS packages when missing
#
# Inside the namespace: etcd, kube-apiserver and kube-controller-manager (controlplane.sh
# with ISSUELOCK_NODE_IP), kube-scheduler, kube-proxy (iptables mode), containerd (its
# root, state, sockets and config under DIR) and the kubelet. The node's address is
# 10.99.0.1 (on the namespace's loopback), pods get 10.88.0.0/16 on bridge cni0 without
# masquerading, Services 10.0.0.0/24. The sandbox ("pause") image is built here.
#
# DIR/env exports KUBECONFIG, PATH (kubectl, helm), ISSUELOCK_NODE_NETNS (the namespace's
# path: run clients with `nsenter --net=$ISSUELOCK_NODE_NETNS ...`) and ISSUELOCK_NODE_CTR
# (the containerd socket, for `ctr --address`).
#
# Needs root, and the OS packages containerd, runc, containernetworking-plugins, iptables,
# umoci, skopeo and busybox-static (installed with apt-get when missing).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
NODE_IP=10.99.0.1
POD_CIDR=10.88.0.0/16
NODE_NAME=issuelock-node
CNI_BIN=/usr/lib/cni
PAUSE_IMAGE=issuelock.local/pause:1
# Deepest first.
FIXED_DIRS=(/run/containerd/s /run/containerd /var/lib/cni/results /var/lib/cni /var/log/containers
  /var/lib/kubelet/device-plugins /var/lib/kubelet)
# Host-wide kernel settings the kubelet sets at start (they are not per network
# namespace): saved by `up`, restored by `down`, counted by `census`.
KERNEL_TUNABLES=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
log() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# === prerequisites ===

# command → Debian package providing it
declare -A PACKAGE_OF=(
  [containerd]=containerd [ctr]=containerd [runc]=runc [$CNI_BIN/bridge]=containernetworking-plugins
  [iptables]=iptables [umoci]=umoci [skopeo]=skopeo [busybox]=busybox-static
  [nsenter]=util-linux [ip]=iproute2 [sysctl]=procps [readelf]=binutils
)

require_node_prerequisites() {
  (( EUID == 0 )) || die "the node tier needs root (network namespaces, containerd, the kubelet); run as root or skip it with ISSUELOCK_E2E_NODE=0"
  [[ -d /sys/fs/cgroup ]] || die "no cgroup file system at /sys/fs/cgroup"
  local c missing=()
  for c in "${!PACKAGE_OF[@]}"; do
    if [[ "$c" == /* ]]; then [[ -x "$c" ]] || missing+=("${PACKAGE_OF[$c]}")
    else command -v "$c" >/dev/null || missing+=("${PACKAGE_OF[$c]}"); fi
  done
  ((${#missing[@]} == 0)) && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if command -v apt-get >/dev/null; then
    log "installing the OS packages ${missing[*]}"
    local apt=(apt-get -o DPkg::Lock::Timeout=300)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2 ||
      { "${apt[@]}" update >&2 && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >&2; } ||
      die "could not install the OS packages ${missing[*]}"
  else
    die "missing OS packages: ${missing[*]} (install them, or skip the node tier with ISSUELOCK_E2E_NODE=0)"
  fi
}

# === helpers ===

in_ns() { nsenter --net="/run/netns/$(cat "$DIR/netns")" "$@"; }
ctr_() { ctr --address "$DIR/containerd/containerd.sock" --namespace k8s.io "$@"; }

start() { # name, command...: start in the cluster's namespace, remember the pid
  local name="$1"; shift
  # nsenter execs the command: $! is the component's own pid.
  nsenter --net="/run/netns/$(cat "$DIR/netns")" "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

stop_pid_file() {
  local f="$1" pid
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_for() { # what, tries (0.5 s apart), command...
  local what="$1" tries="$2"; shift 2
  while ! "$@" >/dev/null 2>&1; do
    (( --tries > 0 )) || die "$what did not happen; logs in $DIR/*.log"
    sleep 0.5
  done
}

# === images ===

import_images() {
  local f
  for f in "$@"; do
    ctr_ images import --snapshotter overlayfs "$f" >&2 || die "could not import $f"
  done
}

# === up ===

write_containerd_config() {
  local c="$DIR/containerd"
  mkdir -p "$c" "$DIR/cni/net.d" "$DIR/cni/ipam"
  cat >"$c/config.toml" <<TOML
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The sandbox may not lower its OOM score without CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$c/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$DIR/cni/net.d"
TOML
  # A bridge without masquerading: pods reach the node (and, through kube-proxy, the API
  # server), nothing else exists in this namespace.
  cat >"$DIR/cni/net.d/10-issuelock.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$(cat "$DIR/cni-network")",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$DIR/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

write_kubelet_config() {
  local k="$DIR/kubelet"
  mkdir -p "$k/root" "$k/pki" "$k/pod-logs" "$k/volume-plugins"
  cat >"$k/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
imageServiceEndpoint: unix://$DIR/containerd/containerd.sock
podLogsDir: $k/pod-logs
volumePluginDir: $k/volume-plugins
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $DIR/cp/pki/ca.crt}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "1%", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 4s
resolvConf: ""
YAML
}

# A tiny static program that waits for SIGTERM/SIGINT: the pods' sandbox container.
pause_image() {
  local cache="${ISSUELOCK_CACHE:-$HOME/.cache/issuelock}/images"
  local archive="$cache/pause-1.tar"
  [[ -s "$archive" ]] && { echo "$archive"; return; }
  mkdir -p "$cache"
  local work
  work="$(mktemp -d "$DIR/pause.XXXXXX")"
  cat >"$work/main.go" <<'GO'
// The pod sandbox: holds the pod's namespaces and waits to be stopped.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
GO
  printf 'module issuelock.dev/pause\n\ngo 1.21\n' >"$work/go.mod"
  mkdir -p "$work/rootfs"
  (cd "$work" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o rootfs/pause .) ||
    die "could not build the pause program"
  bash "$here/image.sh" layout "$work/rootfs" "$PAUSE_IMAGE" "$archive.tmp" --config.entrypoint /pause \
    --config.user 65535:65535 >/dev/null
  mv "$archive.tmp" "$archive"
  rm -rf "$work"
  echo "$archive"
}

up() {
  require_node_prerequisites
  # One kubelet per machine: it owns fixed paths (/var/lib/kubelet/device-plugins, whose
  # sockets it deletes at start) and host-wide kernel settings.
  ! pgrep -x kubelet >/dev/null || die "a kubelet is already running on this machine (another node run, or a real node); not starting a second one"
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  local id bin
  bin="$("$here/assets.sh" | tail -n1)"
  id="$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
  [[ ! -e "/run/netns/issuelock-node-$id" ]] || die "network namespace issuelock-node-$id exists already"
  echo "issuelock-node-$id" >"$DIR/netns"
  echo "issuelock-$id" >"$DIR/cni-network"
  local ns
  ns="$(cat "$DIR/netns")"
  log "network namespace $ns (no route out), node address $NODE_IP"
  # `ip netns add` makes /run/netns a mount point the first time; undone by `down`.
  mountpoint -q /run/netns || touch "$DIR/made-run-netns-mount"
  # Directories the runtime creates at fixed places (containerd 1.6's shim sockets, the
  # CNI result cache, the kubelet's log links): removed by `down` if this run made them.
  local d
  for d in "${FIXED_DIRS[@]}"; do [[ -e "$d" ]] || echo "$d" >>"$DIR/made-dirs"; done
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$NODE_IP/32" dev lo
  in_ns sysctl -qw net.ipv4.ip_forward=1

  ISSUELOCK_NODE_IP="$NODE_IP" in_ns bash "$here/controlplane.sh" up "$DIR/cp"
  local kc="$DIR/cp/kubeconfig"

  write_containerd_config
  log "containerd (root, state, sockets under $DIR/containerd)"
  start containerd containerd --config "$DIR/containerd/config.toml"
  wait_for "containerd's socket" 60 ctr_ version
  import_images "$(pause_image)"

  write_kubelet_config
  local t
  for t in "${KERNEL_TUNABLES[@]}"; do echo "$t=$(sysctl -n "$t")"; done >"$DIR/host-sysctls"
  log "kubelet (node $NODE_NAME)"
  start kubelet "$bin/kubelet" --config="$DIR/kubelet/config.yaml" --kubeconfig="$kc" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$DIR/kubelet/root" \
    --cert-dir="$DIR/kubelet/pki" --v=1
  log "kube-scheduler, kube-proxy"
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$kc" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0
  start kube-proxy "$bin/kube-proxy" --kubeconfig="$kc" --proxy-mode=iptables \
    --hostname-override="$NODE_NAME" --cluster-cidr="$POD_CIDR" --conntrack-max-per-core=0 \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 --v=1

  export KUBECONFIG="$kc"
  wait_for "node $NODE_NAME registering" 120 in_ns "$bin/kubectl" get node "$NODE_NAME"
  in_ns "$bin/kubectl" wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null ||
    die "node $NODE_NAME did not become Ready; see $DIR/kubelet.log"
  wait_for "the default ServiceAccount" 120 in_ns "$bin/kubectl" get serviceaccount default -n default
  # kube-proxy's rules for the `kubernetes` Service: how pods reach the API server.
  wait_for "kube-proxy's rule for the kubernetes Service" 120 \
    bash -c "nsenter --net=/run/netns/$ns iptables-save -t nat | grep -q 'default/kubernetes:https'"
  local c
  for c in containerd kubelet kube-scheduler kube-proxy; do
    kill -0 "$(cat "$DIR/$c.pid")" 2>/dev/null || die "$c exited; see $DIR/$c.log"
  done
  cat >"$DIR/env" <<ENV
export KUBECONFIG="$kc"
export PATH="$bin:\$PATH"
export ISSUELOCK_NODE_DIR="$DIR"
export ISSUELOCK_NODE_NETNS="/run/netns/$ns"
export ISSUELOCK_NODE_CTR="$DIR/containerd/containerd.sock"
ENV
  log "ready: node $NODE_NAME Ready; source $DIR/env and run clients with nsenter --net=/run/netns/$ns"
}

# === down ===

# Network namespaces of this run's pods: the far ends of the cluster namespace's veths.
pod_netns() {
  ip -n "$1" -o link show type veth 2>/dev/null | sed -n 's/.* link-netns \([^ ]*\).*/\1/p' | sort -u
}

down() {
  [[ -d "$DIR" ]] || return 0
  DIR="$(cd "$DIR" && pwd)"
  local ns="" bin pid
  [[ -f "$DIR/netns" ]] && ns="$(cat "$DIR/netns")"
  bin="$("$here/assets.sh" 2>/dev/null | tail -n1)" || bin=""
  local netns_of_pods=()
  [[ -n "$ns" && -e "/run/netns/$ns" ]] && mapfile -t netns_of_pods < <(pod_netns "$ns")

  # Pods first, through the kubelet, so containerd tears their sandboxes down properly.
  if [[ -n "$ns" && -e "/run/netns/$ns" && -f "$DIR/cp/kubeconfig" && -n "$bin" ]] &&
    [[ -f "$DIR/kubelet.pid" ]] && kill -0 "$(cat "$DIR/kubelet.pid")" 2>/dev/null; then
    local k=(in_ns "$bin/kubectl" --kubeconfig "$DIR/cp/kubeconfig" --request-timeout=10s)
    "${k[@]}" delete deployments,replicasets,statefulsets,daemonsets,jobs --all -A --wait=false >/dev/null 2>&1 || true
    "${k[@]}" delete pods --all -A --grace-period=1 --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 60); do
      [[ -z "$(ctr_ tasks ls 2>/dev/null | awk '$3 == "RUNNING"')" ]] && break
      sleep 0.5
    done
  fi
  stop_pid_file "$DIR/kubelet.pid"
  if [[ -f "$DIR/host-sysctls" ]]; then
    local setting
    while read -r setting; do sysctl -qw "$setting" 2>/dev/null || true; done <"$DIR/host-sysctls"
  fi
  stop_pid_file "$DIR/kube-proxy.pid"
  stop_pid_file "$DIR/kube-scheduler.pid"

  # Whatever is still running: kill, delete the tasks and containers.
  local containers=()
  if [[ -f "$DIR/containerd.pid" ]] && kill -0 "$(cat "$DIR/containerd.pid")" 2>/dev/null; then
    mapfile -t containers < <(ctr_ containers ls -q 2>/dev/null)
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    for t in $(ctr_ tasks ls -q 2>/dev/null); do
      for _ in $(seq 20); do ctr_ tasks delete "$t" >/dev/null 2>&1 && break; sleep 0.25; done
    done
    for t in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$t" >/dev/null 2>&1 || true; done
  fi
  stop_pid_file "$DIR/containerd.pid"
  # Shims of this run outlive containerd only if a task survived; they name its socket.
  for pid in $(grep -lsF -- "$DIR/containerd/containerd.sock" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    kill -9 "$pid" 2>/dev/null || true
  done
  if [[ -n "$ns" && -e "/run/netns/$ns" ]]; then
    in_ns bash "$here/controlplane.sh" down "$DIR/cp" || true
  fi

  # Mounts under DIR (container root file systems, pod volumes), deepest first.
  local m
  for m in $(awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  local n
  for n in "${netns_of_pods[@]}"; do
    [[ "$n" == cni-* ]] && ip netns delete "$n" 2>/dev/null || true
  done
  # libcni's result cache, per network and container (sandboxes torn down without CNI DEL).
  if [[ -f "$DIR/cni-network" ]]; then
    rm -f /var/lib/cni/results/"$(cat "$DIR/cni-network")"-* 2>/dev/null || true
  fi
  local c
  for c in "${containers[@]}"; do rm -f /var/lib/cni/results/*-"$c"-* 2>/dev/null || true; done
  # The kubelet links container logs into /var/log/containers; remove the links into DIR.
  local l
  for l in /var/log/containers/*.log; do
    [[ -L "$l" && "$(readlink "$l")" == "$DIR/"* ]] && rm -f "$l"
  done
  [[ -n "$ns" ]] && { ip netns delete "$ns" 2>/dev/null || true; }
  if [[ -f "$DIR/made-dirs" ]]; then
    # The kubelet's device-plugin socket and checkpoint, if this run made their directory.
    if grep -qx /var/lib/kubelet/device-plugins "$DIR/made-dirs"; then
      rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
    fi
    local d
    while read -r d; do rmdir "$d" 2>/dev/null || true; done <"$DIR/made-dirs"
  fi
  if [[ -f "$DIR/made-run-netns-mount" ]] && [[ -z "$(ls -A /run/netns 2>/dev/null)" ]]; then
    umount /run/netns 2>/dev/null || true
  fi
  rm -rf "$DIR"
  log "stopped and removed $DIR"
}

# === census ===

census() {
  echo "mounts $(wc -l </proc/self/mountinfo)"
  echo "netns $(find /run/netns -mindepth 1 2>/dev/null | wc -l)"
  echo "links $(ip -o link | wc -l)"
  echo "iptables $( (iptables-save 2>/dev/null; ip6tables-save 2>/dev/null) | grep -vc '^#' || true)"
  echo "runtime-dirs $(for d in "${FIXED_DIRS[@]}"; do [[ -e "$d" ]] && echo "$d"; done | paste -sd' ' -)"
  echo "cgroups $(find /sys/fs/cgroup -mindepth 2 -type d 2>/dev/null | wc -l)"
  echo "kernel-tunables $(for t in "${KERNEL_TUNABLES[@]}"; do sysctl -n "$t"; done | paste -sd' ' -)"
  # Bracketed patterns so that grep does not count itself.
  echo "node-processes $(grep -lszE '^containerd$|/containerd-shim-runc-v[2]$|/kubele[t]$|/kube-prox[y]$|/kube-schedule[r]$' /proc/[0-9]*/cmdline | wc -l)"
}

case "${1:-}" in
  up) [[ -n "${2:-}" ]] || die "usage: $0 up DIR"; DIR="$2"; up ;;
  down) [[ -n "${2:-}" ]] || die "usage: $0 down DIR"; DIR="$2"; down ;;
  import) [[ -n "${2:-}" && -n "${3:-}" ]] || die "usage: $0 import DIR FILE..."; DIR="$2"; shift 2; import_images "$@" ;;
  census) census ;;
  prereqs) require_node_prerequisites ;;
  *) die "usage: $0 up|down|import|census|prereqs ..." ;;
esac
