#!/usr/bin/env bash
# `make test-crate`: this application's dependency tree has none of the crates that only
# the issuelock binary needs. serde-saphyr may appear only through kube-client (which
# reads kubeconfig files with it), never as a dependency of issuelock itself.
set -euo pipefail
cd "$(dirname "$0")"
binary_only='clap|tracing-subscriber|serde_yaml|serde-saphyr'
tree="$(cargo tree --locked -e normal,build --prefix none)"
if found="$(grep -E "^(clap|tracing-subscriber|serde_yaml) " <<<"$tree" | sort -u)" && [ -n "$found" ]; then
    echo "examples/other-k8s-version depends on crates only the issuelock binary needs:" >&2
    echo "$found" >&2
    exit 1
fi
direct="$(cargo tree --locked -e normal -p issuelock --depth 1 --prefix none | tail -n +2)"
if found="$(grep -E "^($binary_only) " <<<"$direct")" && [ -n "$found" ]; then
    echo "issuelock without default features still depends on:" >&2
    echo "$found" >&2
    exit 1
fi
parents="$(cargo tree --locked -e normal -i serde-saphyr --depth 1 --prefix none 2>/dev/null | tail -n +2 || true)"
if [ -n "$parents" ] && grep -qvE '^kube-client ' <<<"$parents"; then
    echo "serde-saphyr is pulled in by more than kube-client:" >&2
    echo "$parents" >&2
    exit 1
fi
echo "examples/other-k8s-version: no clap, tracing-subscriber or serde_yaml; serde-saphyr only through kube-client; issuelock's own dependencies:"
sed 's/^/  /' <<<"$direct"
