#!/usr/bin/env bash
# Checks deploy/docker/Dockerfile against the built binary, without a Docker engine:
#  - every shared library in `ldd BINARY` belongs (dpkg -S) to a package installed by the
#    runtime stage (the last FROM); fails naming the missing package and the library;
#  - the build stage installs every -dev package and build tool of scripts/install-deps.sh;
#  - both stages are Debian 12; the image runs as uid 65532, exposes 15000 and 15001, has
#    the expected ENTRYPOINT, copies the example configuration, which is valid;
#  - .dockerignore keeps build directories and .git out of the context.
# Usage: check_dockerfile.sh SOURCE_DIR BINARY
set -euo pipefail

src=${1:?usage: check_dockerfile.sh SOURCE_DIR BINARY}
binary=${2:?usage: check_dockerfile.sh SOURCE_DIR BINARY}
dockerfile="$src/deploy/docker/Dockerfile"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

[ -x "$binary" ] || { echo "FAIL: binary $binary not built"; exit 1; }
command -v dpkg >/dev/null || { echo "SKIP: dpkg not available"; exit 77; }

# Joins backslash-continued lines; prints one instruction per line, comments dropped.
instructions() {
  sed -e 's/[[:space:]]*#.*$//' "$1" | awk '
    /\\[[:space:]]*$/ { sub(/\\[[:space:]]*$/, ""); buf = buf $0 " "; next }
    { print buf $0; buf = "" }' | sed -e '/^[[:space:]]*$/d'
}
# The words after `apt-get install` (options and shell operators ended), of every RUN in
# the given instructions.
apt_packages() {
  grep -E '^RUN ' | grep -oE 'apt-get install[^&;|]*' | sed -e 's/^apt-get install//' |
    tr ' ' '\n' | grep -vE '^(-.*|)$' | sort -u
}

all=$(instructions "$dockerfile")
stages=$(printf '%s\n' "$all" | grep -c '^FROM ' || true)
[ "$stages" -ge 2 ] || fail "Dockerfile: expected a multi-stage build (found $stages FROM)"
build_stage=$(printf '%s\n' "$all" | awk '/^FROM /{n++} n==1')
runtime_stage=$(printf '%s\n' "$all" | awk -v last="$stages" '/^FROM /{n++} n==last')

runtime_pkgs=$(printf '%s\n' "$runtime_stage" | apt_packages)
build_pkgs=$(printf '%s\n' "$build_stage" | apt_packages)
[ -n "$runtime_pkgs" ] || fail "runtime stage installs no package"

# --- ldd -> dpkg -S -> runtime stage ------------------------------------------------------
owner() {  # the package owning a library path; tries the /usr-merged spellings too
  local p=$1 cand pkg
  for cand in "$p" "/usr$p" "${p#/usr}" "$(readlink -f "$p")"; do
    [ -n "$cand" ] || continue
    pkg=$(dpkg -S "$cand" 2>/dev/null | head -n1 | cut -d: -f1) || true
    if [ -n "$pkg" ]; then echo "$pkg"; return 0; fi
  done
  return 1
}
ldd_out=$(ldd "$binary")
if grep -q 'not found' <<<"$ldd_out"; then
  fail "ldd: unresolved libraries: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t' ' ')"
fi
libs=$( { grep -oE '=> /[^ ]+' <<<"$ldd_out" | sed 's/^=> //'
          grep -oE '^[[:space:]]*/[^ ]+' <<<"$ldd_out" | tr -d '[:space:]'; echo; } |
        sed '/^$/d' | sort -u)
declare -A needed=()
for lib in $libs; do
  if pkg=$(owner "$lib"); then
    needed[$pkg]+="${needed[$pkg]:+ }$(basename "$lib")"
  else
    fail "no Debian package owns $lib (dpkg -S)"
  fi
done
for pkg in $(printf '%s\n' "${!needed[@]}" | sort); do
  if grep -qxF "$pkg" <<<"$runtime_pkgs"; then
    echo "ok: $pkg (${needed[$pkg]})"
  else
    fail "runtime stage of $dockerfile misses package $pkg (needed for ${needed[$pkg]})"
  fi
done

# --- build stage covers scripts/install-deps.sh's build dependencies -----------------------
deps=$(sed -n '/^packages=(/,/^)/p' "$src/scripts/install-deps.sh" | sed -e 's/#.*$//' |
       tr ' ' '\n' | grep -E -e '-dev$' -e '^(build-essential|cmake|ninja-build|pkg-config|protobuf-compiler.*|googletest)$' |
       sort -u)
for d in $deps; do
  grep -qxF "$d" <<<"$build_pkgs" || fail "build stage misses $d (listed in scripts/install-deps.sh)"
done

# --- image settings --------------------------------------------------------------------------
printf '%s\n' "$all" | grep '^FROM ' | grep -qvE '^FROM debian:12([-.@][^ ]*)?( AS [^ ]+)?$' &&
  fail "every stage must be FROM debian:12 (found: $(printf '%s\n' "$all" | grep '^FROM ' | tr '\n' ';'))"
grep -qE '^RUN .*ninja .*bulwark( |$)' <<<"$build_stage" || fail "build stage does not build target bulwark"
grep -qxE 'USER 65532(:65532)?' <<<"$runtime_stage" || fail "runtime stage must run as USER 65532"
grep -qxE 'EXPOSE 15000 15001' <<<"$runtime_stage" || fail "runtime stage must EXPOSE 15000 15001"
grep -qxF 'ENTRYPOINT ["/usr/local/bin/bulwark","--config","/etc/bulwark/bulwark.yaml"]' <<<"$runtime_stage" ||
  fail 'ENTRYPOINT must be ["/usr/local/bin/bulwark","--config","/etc/bulwark/bulwark.yaml"]'
grep -qE '^COPY --from=[^ ]+ [^ ]*/bulwark /usr/local/bin/bulwark$' <<<"$runtime_stage" ||
  fail "runtime stage must copy the binary to /usr/local/bin/bulwark"
grep -qxF 'COPY deploy/docker/bulwark.yaml /etc/bulwark/bulwark.yaml' <<<"$runtime_stage" ||
  fail "runtime stage must copy deploy/docker/bulwark.yaml to /etc/bulwark/bulwark.yaml"
if ! out=$("$binary" --config "$src/deploy/docker/bulwark.yaml" --validate 2>&1); then
  fail "deploy/docker/bulwark.yaml is not valid: $out"
fi

# --- .dockerignore ----------------------------------------------------------------------------
ignore="$src/.dockerignore"
if [ ! -f "$ignore" ]; then
  fail "$ignore missing"
else
  grep -qxE '\.git/?' "$ignore" || fail ".dockerignore must exclude .git"
  grep -qxE 'build\*/?' "$ignore" || fail ".dockerignore must exclude build*"
fi

if [ "$failures" -ne 0 ]; then
  echo "check_dockerfile: $failures failure(s)"
  exit 1
fi
echo "check_dockerfile: runtime packages cover all ${#needed[@]} packages of ldd $(basename "$binary"); ok"
