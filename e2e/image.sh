#!/usr/bin/env bash
# Container images without Docker, as OCI archives (umoci and skopeo, OS packages).
#
#   e2e/image.sh [controller]   the controller image ghcr.io/issuelock/issuelock:<version>:
#                               the static release binary as /issuelock on an empty base,
#                               uid 65532, entrypoint /issuelock, command `controller`
#                               (the Dockerfile's layout)
#   e2e/image.sh worker         the example worker image ghcr.io/issuelock/example-worker:<version>:
#                               /issuelock plus a static busybox as /bin/sh (examples/worker)
#   e2e/image.sh name controller|worker   print the image's name (builds nothing)
#   e2e/image.sh layout ROOTFS NAME ARCHIVE [umoci config flags...]
#                               any directory as a one-layer image
#
# The last line on stdout is the archive's path. The static binary is built with
# `cargo build --release --target x86_64-unknown-linux-gnu` and +crt-static into
# $CARGO_TARGET_DIR (default ~/.cache/issuelock/target, outside the repository), archives
# go to ${ISSUELOCK_CACHE:-~/.cache/issuelock}/images and are rebuilt only when their
# contents change. Import one with `ctr -n k8s.io images import FILE`, or
# `skopeo copy oci-archive:FILE docker-daemon:NAME` for Docker.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
CACHE="${ISSUELOCK_CACHE:-$HOME/.cache/issuelock}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
TARGET=x86_64-unknown-linux-gnu
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT  # (set -u: an empty array expands fine in bash >= 4.4)
# VAR: a fresh directory, removed when the script exits.
scratch_dir() { local d; d="$(mktemp -d "${TMPDIR:-/tmp}/issuelock-image.XXXXXX")"; scratch+=("$d"); printf -v "$1" %s "$d"; }
log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || die "$c is missing: install the OS packages umoci and skopeo (and busybox-static for the worker image)"
  done
}

version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1
}

# controller|worker: the image's name.
image_name() {
  case "$1" in
    controller) echo "ghcr.io/issuelock/issuelock:$(version)" ;;
    worker) echo "ghcr.io/issuelock/example-worker:$(version)" ;;
    *) die "no image $1 (controller or worker)" ;;
  esac
}

# ROOTFS NAME ARCHIVE [umoci config flags]: one layer holding ROOTFS's files (owned by root).
layout() {
  local rootfs="$1" name="$2" archive="$3"; shift 3
  need umoci skopeo
  local work
  scratch_dir work
  umoci init --layout "$work/oci" >&2
  umoci new --image "$work/oci:build" >&2
  umoci insert --image "$work/oci:build" "$rootfs" / >&2
  umoci config --image "$work/oci:build" --config.workingdir / "$@" >&2
  umoci gc --layout "$work/oci" >&2
  rm -f "$archive"
  skopeo copy --quiet "oci:$work/oci:build" "oci-archive:$archive:$name" >&2
  echo "$archive"
}

static_binary() {
  command -v cargo >/dev/null || die "cargo is required"
  log "static release binary (cargo build --release --target $TARGET, +crt-static) in $CARGO_TARGET_DIR"
  (cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --quiet \
    --target "$TARGET" --bin issuelock >&2) || die "the release build failed"
  local bin="$CARGO_TARGET_DIR/$TARGET/release/issuelock"
  file_is_static "$bin" || die "$bin is not statically linked"
  echo "$bin"
}

file_is_static() {
  # A static(-pie) ELF has no PT_INTERP program header.
  ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

# NAME ARCHIVE ROOTFS [flags]: build unless ARCHIVE already holds exactly these contents.
cached_image() {
  local name="$1" archive="$2" rootfs="$3"; shift 3
  local stamp
  stamp="$( (cd "$rootfs" && find . -printf '%p %l %m\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); echo "$name $*")"
  stamp="$(sha256sum <<<"$stamp" | cut -c1-64)"
  if [[ -s "$archive" && "$(cat "$archive.stamp" 2>/dev/null)" == "$stamp" ]]; then
    log "$name: unchanged ($archive)"
    echo "$archive"
    return
  fi
  layout "$rootfs" "$name" "$archive.tmp" "$@" >/dev/null
  mv "$archive.tmp" "$archive"
  echo "$stamp" >"$archive.stamp"
  log "$name: $archive ($(du -h "$archive" | cut -f1))"
  echo "$archive"
}

controller() {
  local v bin rootfs
  v="$(version)"
  bin="$(static_binary)"
  mkdir -p "$CACHE/images"
  scratch_dir rootfs
  install -m 0755 "$bin" "$rootfs/issuelock"
  cached_image "$(image_name controller)" "$CACHE/images/issuelock-$v.tar" "$rootfs" \
    --config.user 65532:65532 --config.entrypoint /issuelock --config.cmd controller
}

worker() {
  local v bin rootfs busybox
  v="$(version)"
  bin="$(static_binary)"
  busybox="$(command -v busybox)" || die "busybox is missing: install the OS package busybox-static"
  file_is_static "$busybox" || die "$busybox is not static: install the OS package busybox-static"
  mkdir -p "$CACHE/images"
  scratch_dir rootfs
  install -m 0755 "$bin" "$rootfs/issuelock"
  mkdir -p "$rootfs/bin" "$rootfs/usr/local/bin"
  ln -s /issuelock "$rootfs/usr/local/bin/issuelock"
  install -m 0755 "$busybox" "$rootfs/bin/busybox"
  local applet
  for applet in sh echo cat sleep date id touch test [ printf ls grep mkdir rm shuf kill wget; do
    ln -s busybox "$rootfs/bin/$applet"
  done
  cached_image "$(image_name worker)" "$CACHE/images/example-worker-$v.tar" "$rootfs" \
    --config.user 65532:65532 --config.env PATH=/usr/local/bin:/bin --config.entrypoint /bin/sh
}

case "${1:-controller}" in
  controller) controller ;;
  worker) worker ;;
  name) image_name "${2:-}" ;;
  layout) shift; [[ $# -ge 3 ]] || die "usage: $0 layout ROOTFS NAME ARCHIVE [umoci config flags]"; layout "$@" ;;
  *) die "usage: $0 [controller|worker|name controller|worker|layout ROOTFS NAME ARCHIVE ...]" ;;
esac
