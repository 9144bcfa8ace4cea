#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kwok) from their
# published Go modules, once: binaries are cached by version and never rebuilt when present.
# Prints the cache directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
K8S=v1.37.2 ETCD=v3.6.16 KWOK=v0.8.0
cache=${CANARYD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canaryd}/controlplane/k8s-$K8S-etcd-$ETCD-kwok-$KWOK
mkdir -p "$cache"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

build() { # dir package binary
  local out="$cache/$3"
  [ -x "$out" ] && return 0
  echo "building $3 (cached afterwards in $cache)" >&2
  (cd "$here/$1" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" "$2") >&2
  mv "$out.tmp" "$out"
}
build etcd go.etcd.io/etcd/server/v3 etcd
build kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build kube k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build kwok sigs.k8s.io/kwok/cmd/kwok kwok
echo "$cache"
