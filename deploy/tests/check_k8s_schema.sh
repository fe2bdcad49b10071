#!/usr/bin/env bash
# Schema validation of deploy/kubernetes/*.yaml against the Kubernetes (and Prometheus
# Operator) API schemas, offline once installed: node + the pinned npm packages of
# deploy/tests/schema (installed with `npm ci` into BUILD_DIR/deploy-schema on first run).
# Also renders the kustomization with `kubectl kustomize` when kubectl is installed and
# validates that output too. Exits 77 (ctest: skipped) without node/npm or when the
# packages cannot be installed.
# Usage: check_k8s_schema.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=${1:?usage: check_k8s_schema.sh SOURCE_DIR BUILD_DIR}
build=${2:?usage: check_k8s_schema.sh SOURCE_DIR BUILD_DIR}
here="$src/deploy/tests/schema"
work="$build/deploy-schema"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: node/npm not installed: no offline Kubernetes schema validator"; exit 77
fi
mkdir -p "$work"
cp "$here/validate.mjs" "$work/"
if ! cmp -s "$here/package-lock.json" "$work/package-lock.json" || [ ! -d "$work/node_modules" ]; then
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  if ! (cd "$work" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >npm.log 2>&1); then
    cat "$work/npm.log"; rm -f "$work/package-lock.json"
    echo "SKIP: could not install the schema packages with npm ci"; exit 77
  fi
fi

files=()
while read -r f; do files+=("$src/deploy/kubernetes/$f"); done < <(
  sed -n '/^resources:/,/^[a-z]/p' "$src/deploy/kubernetes/kustomization.yaml" |
    grep -oE '^[[:space:]]*-[[:space:]]*[^[:space:]#]+' | sed -E 's/^[[:space:]]*-[[:space:]]*//')
[ ${#files[@]} -gt 0 ] || { echo "FAIL: no resources in kustomization.yaml"; exit 1; }
node "$work/validate.mjs" "${files[@]}"

if command -v kubectl >/dev/null; then
  kubectl kustomize "$src/deploy/kubernetes" > "$work/rendered.yaml"
  echo "== kubectl kustomize output"
  node "$work/validate.mjs" "$work/rendered.yaml"
else
  echo "(kubectl not installed: kustomize rendering not checked)"
fi
echo "check_k8s_schema: ok"
