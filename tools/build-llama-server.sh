#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the llama.cpp sources vendored in the llama-cpp-python sdist
# that uv.lock pins (same URL, verified against the lock's sha256), so `make bench` measures our
# server against the very llama.cpp it links. Output: .bench/llama-server (reused when present).
# CPU build, native flags, like llama-cpp-python's own wheel built on this machine.
# `--sources`: only fetch, verify and unpack the sdist; print where (tools/gpu-pack.sh packs it from there).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.bench/llama-server
sources_only=false
[ "${1:-}" = --sources ] && sources_only=true
if ! $sources_only && [ -x "$out" ]; then echo "$out"; exit 0; fi
line=$(grep -A12 '^name = "llama-cpp-python"' uv.lock | grep '^sdist = ')
url=$(sed -E 's/.*url = "([^"]+)".*/\1/' <<<"$line")
sha=$(sed -E 's/.*hash = "sha256:([0-9a-f]+)".*/\1/' <<<"$line")
work=.bench/build
mkdir -p "$work"
tarball="$work/$(basename "$url")"
if ! echo "$sha  $tarball" | sha256sum -c --status 2>/dev/null; then
    python3 - "$url" "$tarball" <<'PY'
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
PY
fi
echo "$sha  $tarball" | sha256sum -c --quiet
src="$work/src"
rm -rf "$src" && mkdir -p "$src"
tar -xzf "$tarball" -C "$src" --strip-components=1
if $sources_only; then echo "$src"; exit 0; fi
cmake -S "$src/vendor/llama.cpp" -B "$work/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$work/cmake" --target llama-server -j "$(nproc)" >/dev/null
cp "$work/cmake/bin/llama-server" "$out"
echo "$out"
