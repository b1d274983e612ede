#!/usr/bin/env bash
# Make the GPU benchmark kit in .gpukit/ (runs on the CPU machine; see benchmarks/gpu/README.md).
#
#   .gpukit/src.tar.xz      kit/llama.cpp (patched with every patches/*.patch, trimmed to what a
#                           library build needs), kit/llama_cpp_parent/llama_cpp (the sdist's
#                           pure-Python package), kit/KIT_INFO.json
#   .gpukit/wheels/         pure-Python wheels the GPU machine lacks (gguf, scikit-optimize, pyaml, diskcache)
#   .gpukit/model.part1/2   SmolLM2-135M-Instruct Q4_1 in two halves, .gpukit/model.sha256
#
# Options (environment): SDIST, MODEL, KIT_CHECK=0 to skip the CMake configure check.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KITDIR=$ROOT/.gpukit
SDIST=${SDIST:-/root/.cache/swift-gguf/sdist/llama_cpp_python-0.3.36.tar.gz}
MODEL=${MODEL:-/root/.cache/swift-gguf/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PIP=${PIP:-$ROOT/.venv/bin/pip}
STAGE=$(mktemp -d /tmp/gpukit-stage.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT

say() { echo "[make_kit] $*" >&2; }

# -- the pinned sdist, checked --------------------------------------------------------------
want=$(sed -n 's/^sha256=//p' "$ROOT/patches/PIN")
got=$(sha256sum "$SDIST" | cut -d' ' -f1)
[ "$got" = "$want" ] || { say "sdist $SDIST has sha256 $got, patches/PIN wants $want"; exit 1; }
say "extracting $(basename "$SDIST")"
tar xzf "$SDIST" -C "$STAGE"
SRC=$(echo "$STAGE"/llama_cpp_python-*)

# -- patches, in name order (as native/build.py applies them) ---------------------------------
applied=()
for p in $(ls "$ROOT"/patches/*.patch | sort); do
    (cd "$SRC" && git apply --whitespace=nowarn --check "$p") \
        || { say "patch $(basename "$p") does not apply to the pinned sdist"; exit 1; }
    (cd "$SRC" && git apply --whitespace=nowarn "$p")
    applied+=("$(basename "$p") $(sha256sum "$p" | cut -c1-16)")
    say "applied $(basename "$p")"
done

# -- trimmed tree -------------------------------------------------------------------------------
K=$STAGE/kit
mkdir -p "$K/llama_cpp_parent"
cp -a "$SRC/llama_cpp" "$K/llama_cpp_parent/"
find "$K/llama_cpp_parent" -name __pycache__ -prune -exec rm -rf {} +
L=$SRC/vendor/llama.cpp
# what a library-only build reads: top-level CMake files, cmake/, ggml/, src/, include/, vendor/
# (vendor/CMakeLists.txt adds its subfolders unconditionally), licenses
mkdir -p "$K/llama.cpp"
for f in CMakeLists.txt LICENSE cmake ggml src include vendor licenses; do
    [ -e "$L/$f" ] && cp -a "$L/$f" "$K/llama.cpp/"
done
# ggml backends other than CPU and CUDA (each is added only when its GGML_<NAME> is ON)
for b in cann et hexagon metal opencl openvino sycl vulkan webgpu virtgpu zdnn zendnn musa hip blas rpc; do
    rm -rf "$K/llama.cpp/ggml/src/ggml-$b"
done
rm -rf "$K/llama.cpp/vendor/cpp-httplib"   # only used by common (LLAMA_BUILD_COMMON=OFF)
# vendor/CMakeLists.txt adds cpp-httplib only with LLAMA_BUILD_COMMON; keep that true
grep -q 'if (LLAMA_BUILD_COMMON)' "$K/llama.cpp/vendor/CMakeLists.txt" \
    || { say "vendor/CMakeLists.txt changed: cpp-httplib may be needed"; exit 1; }

python3 - "$K/KIT_INFO.json" "$SDIST" "$got" "${applied[@]}" <<'EOF'
import json, sys, time
out, sdist, sha, *patches = sys.argv[1:]
json.dump({"sdist": sdist.rsplit("/", 1)[-1], "sdist_sha256": sha, "patches": patches,
           "made": time.strftime("%Y-%m-%d %H:%M:%S")}, open(out, "w"), indent=2)
EOF

# -- configure check (CPU, configure only) -----------------------------------------------------
if [ "${KIT_CHECK:-1}" != 0 ]; then
    say "checking that the trimmed tree configures (CPU)"
    rm -rf /tmp/kitcheck
    cmake -S "$K/llama.cpp" -B /tmp/kitcheck -G Ninja -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF \
        -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=ON > "$STAGE/configure.log" 2>&1 \
        || { tail -30 "$STAGE/configure.log"; say "configure FAILED"; exit 1; }
    grep -i -E "warning|error" "$STAGE/configure.log" | head -5 >&2 || true
    say "configure OK"
    rm -rf /tmp/kitcheck
fi

# -- outputs ------------------------------------------------------------------------------------
mkdir -p "$KITDIR"
rm -rf "$KITDIR/wheels" "$KITDIR"/model.part* "$KITDIR/src.tar.xz"
say "compressing src.tar.xz"
tar cf - -C "$STAGE" kit | xz -T2 -6 > "$KITDIR/src.tar.xz.tmp"
mv "$KITDIR/src.tar.xz.tmp" "$KITDIR/src.tar.xz"

say "downloading wheels"
"$PIP" download -q --no-deps --only-binary :all: --python-version 3.12 --implementation py \
    -d "$KITDIR/wheels" gguf==0.19.0 scikit-optimize==0.10.2 pyaml==26.7.0 diskcache==5.6.3

say "splitting the model"
size=$(stat -c %s "$MODEL")
half=$(( (size + 1) / 2 ))
head -c "$half" "$MODEL" > "$KITDIR/model.part1"
tail -c +"$((half + 1))" "$MODEL" > "$KITDIR/model.part2"
(cd "$(dirname "$MODEL")" && sha256sum "$(basename "$MODEL")") | awk '{print $1"  model.gguf"}' > "$KITDIR/model.sha256"
cat "$KITDIR/model.part1" "$KITDIR/model.part2" | sha256sum | cut -d' ' -f1 | grep -qf <(cut -d' ' -f1 "$KITDIR/model.sha256") \
    || { say "model halves do not reassemble"; exit 1; }

tracked=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
c1=$(du -cb "$KITDIR/src.tar.xz" "$KITDIR/wheels" "$KITDIR/model.part1" "$KITDIR/model.sha256" | tail -1 | cut -f1)
c2=$(du -cb "$KITDIR/model.part2" "$KITDIR/model.sha256" | tail -1 | cut -f1)
ls -la "$KITDIR" "$KITDIR/wheels" >&2
say "working tree that travels: $tracked bytes"
say "call 1 carries $c1 bytes + tree = $(( (c1 + tracked) / 1048576 )) MiB (limit 64)"
say "call 2 carries $c2 bytes + tree = $(( (c2 + tracked) / 1048576 )) MiB (limit 64)"
[ $((c1 + tracked)) -lt $((63 * 1048576)) ] && [ $((c2 + tracked)) -lt $((63 * 1048576)) ] \
    || { say "TOO LARGE for one call"; exit 1; }
say "done"
