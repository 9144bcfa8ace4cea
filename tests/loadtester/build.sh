#!/usr/bin/env bash
# Builds Flagger's load tester (github.com/fluxcd/flagger/cmd/loadtester) from its published module, once:
# the binary is cached by version and never rebuilt when present. Prints the binary's path on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
FLAGGER=v1.44.0 # keep in step with go.mod
cache=${CANARYD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canaryd}/loadtester/flagger-$FLAGGER
out="$cache/loadtester"
if [ ! -x "$out" ]; then
  mkdir -p "$cache"
  echo "building Flagger's loadtester $FLAGGER (cached afterwards in $cache)" >&2
  export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
  (cd "$here" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" github.com/fluxcd/flagger/cmd/loadtester) >&2
  mv "$out.tmp" "$out"
fi
echo "$out"
