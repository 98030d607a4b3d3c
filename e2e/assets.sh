#!/usr/bin/env bash
# Obtain the cluster binaries the e2e suite and `make demo` need:
#   etcd, kube-apiserver, kube-controller-manager, kubectl (same version), helm, and for
#   the node tier (e2e/node.sh) kubelet, kube-scheduler and kube-proxy (same version).
#
# Sources, in order:
#   1. $KUBEBUILDER_ASSETS (a directory with etcd, kube-apiserver, kubectl), when set;
#      missing extras (kube-controller-manager, helm) are still built.
#   2. the cache ($ISSUELOCK_CACHE, default ~/.cache/issuelock), when already built;
#   3. a build from the Go module proxy with the machine's Go toolchain.
#
# Progress goes to stderr; the last line on stdout is the directory holding every binary.
set -euo pipefail

K8S_VERSION="${ISSUELOCK_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ISSUELOCK_ETCD_VERSION:-v3.7.3}"
HELM_VERSION="${ISSUELOCK_HELM_VERSION:-v3.22.0}"
CACHE="${ISSUELOCK_CACHE:-$HOME/.cache/issuelock}"
OUT="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
SRC="$CACHE/src"
# Built together from k8s.io/kubernetes; the last three run the node tier's single node.
KUBE_CMDS=(kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy)

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod GOPROXY="${GOPROXY:-https://proxy.golang.org}"

log() { printf '[assets %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "the Go toolchain is required to build the control plane (or set KUBEBUILDER_ASSETS)"
mkdir -p "$OUT" "$SRC"

# Run a long command, printing a heartbeat line every 30 s so the user sees progress.
with_progress() {
  local what="$1"; shift
  local start=$SECONDS
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if (( (SECONDS - start) % 30 < 5 )) && kill -0 "$pid" 2>/dev/null; then
      log "$what: still building ($((SECONDS - start)) s so far)"
    fi
  done
  wait "$pid" || die "$what failed"
  log "$what: done in $((SECONDS - start)) s"
}

link_from_assets() {
  local name="$1"
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$name" && ! -x "$OUT/$name" ]]; then
    ln -sf "$KUBEBUILDER_ASSETS/$name" "$OUT/$name"
    log "$name: from KUBEBUILDER_ASSETS"
  fi
}

build_kubernetes() {
  local dir="$SRC/kubernetes-$K8S_VERSION" minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local staging="v0.$minor.${K8S_VERSION##*.}"
  mkdir -p "$dir"
  log "kubernetes $K8S_VERSION: preparing wrapper module in $dir (staging modules at $staging)"
  (
    cd "$dir"
    rm -f go.mod go.sum
    go mod init issuelock.dev/build/kubernetes >/dev/null 2>&1
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION's go.mod"
    # Staging replaces (./staging/src/k8s.io/X) become X => X $staging; others are copied.
    go mod edit -json "$gomod" | python3 -c '
import json, sys
d = json.load(sys.stdin)
staging = sys.argv[1]
for r in d.get("Replace") or []:
    old, new = r["Old"]["Path"], r["New"]
    if new["Path"].startswith("./") or new["Path"].startswith("../"):
        print(f"-replace={old}={old}@{staging}")
    else:
        v = ("@" + new["Version"]) if new.get("Version") else ""
        print("-replace=%s=%s%s" % (old, new["Path"], v))
print("-go=" + d["Go"])
' "$staging" | xargs go mod edit
    # `go mod edit -json` omits godebug lines: copy them from the file itself.
    sed -n 's/^godebug[[:space:]]\{1,\}\([^[:space:]]*\)[[:space:]]*$/-godebug=\1/p' "$gomod" | sort -u | xargs -r go mod edit
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    log "kubernetes: $(grep -c '=>' go.mod) replace directives generated from its go.mod"
    local c
    for c in "${KUBE_CMDS[@]}"; do echo "k8s.io/kubernetes/cmd/$c@$K8S_VERSION"; done | xargs go get >&2
  )
  local ld="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  # One `go build` for every missing command: they share most packages.
  local missing=() c
  for c in "${KUBE_CMDS[@]}"; do [[ -x "$OUT/$c" ]] || missing+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$dir" && with_progress "${missing[*]##*/} $K8S_VERSION (cold: tens of minutes)" \
    go build -trimpath -ldflags="-s -w$ld" -o "$OUT/" "${missing[@]}")
}

build_etcd() {
  local dir="$SRC/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  log "etcd $ETCD_VERSION: preparing wrapper module in $dir"
  (
    cd "$dir"
    rm -f go.mod go.sum
    go mod init issuelock.dev/build/etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
    with_progress "etcd $ETCD_VERSION" go build -trimpath -ldflags="-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
  )
}

build_helm() {
  local dir="$SRC/helm-$HELM_VERSION"
  mkdir -p "$dir"
  log "helm $HELM_VERSION: building"
  (
    cd "$dir"
    rm -f go.mod go.sum
    go mod init issuelock.dev/build/helm >/dev/null 2>&1
    go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
    with_progress "helm $HELM_VERSION" go build -trimpath \
      -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$OUT/helm" helm.sh/helm/v3/cmd/helm
  )
}

for b in etcd kube-apiserver kubectl; do link_from_assets "$b"; done

if [[ ! -x "$OUT/etcd" ]]; then build_etcd; else log "etcd: cached"; fi
kube_missing=0
for c in "${KUBE_CMDS[@]}"; do [[ -x "$OUT/$c" ]] || kube_missing=1; done
if (( kube_missing )); then
  build_kubernetes
else
  log "${KUBE_CMDS[*]}: cached"
fi
if [[ ! -x "$OUT/helm" ]]; then build_helm; else log "helm: cached"; fi

for b in etcd "${KUBE_CMDS[@]}" helm; do
  [[ -x "$OUT/$b" ]] || die "$b is missing from $OUT"
done
log "all binaries ready in $OUT"
echo "$OUT"
