#!/usr/bin/env bash
# promtool checks of deploy/prometheus/:
#  - alerts.yaml passes `promtool check rules`;
#  - alerts_test.yaml passes `promtool test rules` (every alert firing and not firing);
#  - scrape.yaml passes `promtool check config` (its rule_files included). Debian's
#    Prometheus is built without Kubernetes service discovery, so where promtool rejects
#    kubernetes_sd_configs the check runs on a copy with a static target in its place
#    (the relabelling rules are still compiled and checked; deploy_test checks what they keep).
# Usage: check_prometheus.sh SOURCE_DIR
set -euo pipefail
src=${1:?usage: check_prometheus.sh SOURCE_DIR}
dir="$src/deploy/prometheus"
command -v promtool >/dev/null || { echo "SKIP: promtool not installed (Debian package prometheus)"; exit 77; }
promtool --version | head -n1

echo "== promtool check rules alerts.yaml"
promtool check rules "$dir/alerts.yaml"

echo "== promtool test rules alerts_test.yaml"
(cd "$dir" && promtool test rules alerts_test.yaml)

echo "== promtool check config scrape.yaml"
if out=$(promtool check config "$dir/scrape.yaml" 2>&1); then
  echo "$out"
elif grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
  echo "(this promtool has no Kubernetes service discovery; checking with a static target)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cp "$dir/alerts.yaml" "$tmp/"
  awk '
    /^[[:space:]]*kubernetes_sd_configs:/ {
      match($0, /^[[:space:]]*/); ind = substr($0, 1, RLENGTH)
      print ind "static_configs:"; print ind "  - targets: [\"127.0.0.1:15001\"]"
      skip = 1; next }
    skip && /^[[:space:]]*- role:/ { next }
    { skip = 0; print }' "$dir/scrape.yaml" > "$tmp/scrape.yaml"
  if grep -q kubernetes_sd_configs "$tmp/scrape.yaml"; then
    echo "FAIL: could not replace kubernetes_sd_configs"; exit 1
  fi
  promtool check config "$tmp/scrape.yaml"
else
  echo "$out"
  exit 1
fi
echo "check_prometheus: ok"
