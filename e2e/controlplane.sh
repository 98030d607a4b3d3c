#!/usr/bin/env bash
# A throwaway Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver (RBAC, client
# certificates, service-account tokens) and a kube-controller-manager running only the
# garbage collector, namespace and service-account controllers.
#
#   e2e/controlplane.sh up DIR     start it; writes DIR/kubeconfig and DIR/env
#   e2e/controlplane.sh down DIR   stop it and delete DIR
#   e2e/controlplane.sh stop DIR etcd|apiserver    stop one component (SIGKILL, as a crash)
#   e2e/controlplane.sh start DIR etcd|apiserver   start it again as `up` did, same port
#                                                  and data; waits until it serves
#
# DIR/env exports KUBECONFIG and puts the matching kubectl and helm on PATH.
# Everything listens on 127.0.0.1 only; the service range 10.0.0.0/24 is fake.
#
# With ISSUELOCK_NODE_IP set (e2e/node.sh does, inside the network namespace it created)
# the control plane serves a real node instead: the API server listens on every address
# of that namespace and advertises the node IP (the `kubernetes` Service's endpoint), its
# certificate also names 10.0.0.1 and kubernetes.default.svc, the ServiceAccount admission
# plugin mounts tokens into pods, it can reach the kubelet with a client certificate, and
# kube-controller-manager runs all its controllers (Deployments, ReplicaSets, ...).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
log() { printf '[controlplane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

gen_certs() {
  local d="$1/pki" sans="IP:127.0.0.1,DNS:localhost"
  [[ -n "${ISSUELOCK_NODE_IP:-}" ]] && sans+=",IP:$ISSUELOCK_NODE_IP,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # Certificates issued two hours back when libfaketime's `faketime` is there (the chaos
  # soak installs it): a cluster's certificates are older than its clients' clock skew,
  # and the soak moves a worker's clock back by up to an hour.
  local openssl=(command openssl)
  command -v faketime >/dev/null && openssl=(faketime -f -2h openssl)
  mkdir -p "$d"
  (
    cd "$d"
    openssl() { "${openssl[@]}" "$@"; }
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
      -subj "/CN=issuelock-test-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=kube-apiserver" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' "$sans" > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=issuelock-admin" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' > client.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 2 -extfile client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

write_kubeconfig() {
  local dir="$1" port="$2" b64="base64 -w0"
  cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: issuelock-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $($b64 < "$dir/pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $($b64 < "$dir/pki/admin.crt")
    client-key-data: $($b64 < "$dir/pki/admin.key")
contexts:
- name: issuelock-test
  context: {cluster: issuelock-test, user: admin, namespace: default}
current-context: issuelock-test
KC
}

wait_ready() {
  local what="$1" url="$2" dir="$3" tries=240
  while (( tries-- > 0 )); do
    if curl -fsS --max-time 2 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" "$url" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.25
  done
  die "$what did not become ready; see $dir/*.log"
}

# Starts a component in the background, logging to DIR/NAME.log, its pid in DIR/NAME.pid;
# its command line is kept in DIR/NAME.cmd for `start`.
launch() {
  local dir="$1" name="$2"
  shift 2
  printf '%q ' "$@" > "$dir/$name.cmd"
  "$@" >>"$dir/$name.log" 2>&1 &
  echo $! > "$dir/$name.pid"
}

component() {
  case "$1" in
    etcd) echo etcd ;;
    apiserver|kube-apiserver) echo kube-apiserver ;;
    *) die "unknown component $1 (etcd or apiserver)" ;;
  esac
}

stop_one() {
  local dir="$1" c pid
  c="$(component "$2")"
  pid="$(cat "$dir/$c.pid")"
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  log "stopped $c"
}

start_one() {
  local dir="$1" c cmd port
  dir="$(cd "$dir" && pwd)"
  c="$(component "$2")"
  cmd="$(cat "$dir/$c.cmd")"
  eval "launch \"\$dir\" \"\$c\" $cmd"
  if [[ "$c" == etcd ]]; then
    port="$(cat "$dir/etcd.port")"
    for _ in $(seq 240); do
      curl -fsS --max-time 2 "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
      sleep 0.25
    done
  else
    port="$(sed -n 's#.*server: https://127.0.0.1:\([0-9]*\).*#\1#p' "$dir/kubeconfig")"
    wait_ready kube-apiserver "https://127.0.0.1:$port/readyz" "$dir"
  fi
  log "started $c"
}

up() {
  local dir="$1"
  local bin
  bin="$("$here/assets.sh" | tail -n1)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  gen_certs "$dir"
  local etcd_port peer_port api_port
  etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
  log "etcd on 127.0.0.1:$etcd_port"
  printf '%s\n' "$etcd_port" > "$dir/etcd.port"
  launch "$dir" etcd "$bin/etcd" --name=issuelock --data-dir="$dir/etcd" --unsafe-no-fsync \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="issuelock=http://127.0.0.1:$peer_port" --log-level=warn
  local node_flags=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none
    --disable-admission-plugins=ServiceAccount)
  local controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token
  if [[ -n "${ISSUELOCK_NODE_IP:-}" ]]; then
    node_flags=(--bind-address=0.0.0.0 --advertise-address="$ISSUELOCK_NODE_IP"
      --kubelet-client-certificate="$dir/pki/admin.crt" --kubelet-client-key="$dir/pki/admin.key"
      --kubelet-preferred-address-types=InternalIP)
    controllers='*'
  fi
  log "kube-apiserver on https://127.0.0.1:$api_port"
  launch "$dir" kube-apiserver "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --secure-port="$api_port" "${node_flags[@]}" \
    --tls-cert-file="$dir/pki/server.crt" --tls-private-key-file="$dir/pki/server.key" \
    --client-ca-file="$dir/pki/ca.crt" \
    --service-account-issuer=https://127.0.0.1:"$api_port" \
    --service-account-key-file="$dir/pki/sa.pub" --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=RBAC \
    --allow-privileged=false --profiling=false --v=0
  write_kubeconfig "$dir" "$api_port"
  wait_ready kube-apiserver "https://127.0.0.1:$api_port/readyz" "$dir"
  log "kube-controller-manager (controllers: $controllers)"
  "$bin/kube-controller-manager" --kubeconfig="$dir/kubeconfig" --leader-elect=false --secure-port=0 \
    --controllers="$controllers" \
    --service-account-private-key-file="$dir/pki/sa.key" --root-ca-file="$dir/pki/ca.crt" \
    --use-service-account-credentials=false --v=0 \
    >"$dir/kube-controller-manager.log" 2>&1 &
  echo $! > "$dir/kube-controller-manager.pid"
  cat > "$dir/env" <<ENV
export KUBECONFIG="$dir/kubeconfig"
export PATH="$bin:\$PATH"
export ISSUELOCK_CONTROLPLANE_DIR="$dir"
ENV
  log "ready: source $dir/env (kubectl $("$bin/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'))"
}

down() {
  local dir="$1" c pid
  [[ -d "$dir" ]] || return 0
  for c in kube-controller-manager kube-apiserver etcd; do
    [[ -f "$dir/$c.pid" ]] || continue
    pid="$(cat "$dir/$c.pid")"
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
  log "stopped and removed $dir"
}

case "${1:-}" in
  up) [[ -n "${2:-}" ]] || die "usage: $0 up DIR"; up "$2" ;;
  down) [[ -n "${2:-}" ]] || die "usage: $0 down DIR"; down "$2" ;;
  stop) [[ -n "${3:-}" ]] || die "usage: $0 stop DIR etcd|apiserver"; stop_one "$2" "$3" ;;
  start) [[ -n "${3:-}" ]] || die "usage: $0 start DIR etcd|apiserver"; start_one "$2" "$3" ;;
  *) die "usage: $0 up|down DIR, or stop|start DIR etcd|apiserver" ;;
esac
