#!/usr/bin/env bash
# `make bench-peers`: issuelock against the raw API floor, kube-lease-manager, client-go's
# leaderelection and Redis, in one run on one throwaway local control plane (see
# BENCHMARKS.md). Builds what it needs: the issuelock release binary, the bench crate
# (bench/peers, its own Cargo.toml), the client-go program (Go module proxy, cached under
# the issuelock cache), and installs redis-server from the Debian packages when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
cache="${ISSUELOCK_CACHE:-$HOME/.cache/issuelock}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
log() { printf '[bench-peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

dir="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-bench-peers.XXXXXX")"
redis_pid=""
cleanup() {
  if [[ -n "$redis_pid" ]]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  bash e2e/controlplane.sh down "$dir/cp" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  [[ "$(id -u)" == 0 ]] || die "redis-server is missing: install it (apt-get install redis-server) or run as root"
  log "installing redis-server from the Debian packages"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

# The client-go program, built once per source version.
src="$root/bench/peers/leasepeer"
sum="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)"
leasepeer="$cache/bin/leasepeer-$sum"
if [[ ! -x "$leasepeer" ]]; then
  log "building the client-go program (Go module proxy)"
  mkdir -p "$cache/bin"
  (cd "$src" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -o "$leasepeer.tmp" .)
  mv "$leasepeer.tmp" "$leasepeer"
fi

log "building issuelock and the bench (release)"
cargo build --release --quiet
cargo build --release --quiet --manifest-path bench/peers/Cargo.toml

bash e2e/controlplane.sh up "$dir/cp"
# shellcheck disable=SC1091
source "$dir/cp/env"
"$CARGO_TARGET_DIR/release/issuelock" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/issuelocks.issuelock.dev >/dev/null
kubectl create namespace bench >/dev/null
# The overhead phase counts the CPU time of the control plane's processes, too.
cpu=()
for c in kube-apiserver etcd kube-controller-manager; do
  [[ -f "$dir/cp/$c.pid" ]] && cpu+=(--cpu "$c=$(cat "$dir/cp/$c.pid")")
done

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
log "redis-server on 127.0.0.1:$port"
redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes --save '' --appendonly no \
  --dir "$dir" --daemonize no >"$dir/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null || die "redis-server did not start; see $dir/redis.log"

log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
RUST_LOG="${RUST_LOG:-warn}" "$CARGO_TARGET_DIR/release/bench-peers" run --namespace bench \
  --redis-url "redis://127.0.0.1:$port/" --issuelock "$CARGO_TARGET_DIR/release/issuelock" \
  --leasepeer "$leasepeer" "${cpu[@]}" "$@"
