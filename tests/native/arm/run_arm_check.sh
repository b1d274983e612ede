#!/bin/bash
# Cross-check of patch 0003's CPU batch invariance on aarch64 (Apple Silicon's ISA) under qemu-user:
# extract the pinned llama-cpp-python sdist, apply patches/*.patch in name order (as native/build.py
# does: git apply from the sdist root), cross-build llama.cpp's static libraries for aarch64, link
# verify_check.cpp statically and run it under qemu-aarch64 -cpu max.
#
# Needs: g++-aarch64-linux-gnu (with libgomp), qemu-user, cmake, ninja, git; the sdist in
# ~/.cache/swift-gguf/sdist/ and the models in ~/.cache/swift-gguf/models/.
# usage: run_arm_check.sh [WORKDIR]   env: MARCHS="armv8.2-a+dotprod+fp16 armv8.2-a+dotprod+i8mm+fp16"
#        QUICK=1 (a smaller grid), MODELS="smollm gemma"
# Exit 0 only if every invariant comparison is bit-identical (plain-control rows are reported only).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
W=${1:-/tmp/arm}
MARCHS=${MARCHS:-"armv8.2-a+dotprod+fp16 armv8.2-a+dotprod+i8mm+fp16"}
MODELS=${MODELS:-"smollm gemma"}
SDIST=${SDIST:-$HOME/.cache/swift-gguf/sdist/llama_cpp_python-0.3.36.tar.gz}
MDIR=${MDIR:-$HOME/.cache/swift-gguf/models}
Q="qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu"
JOBS=${JOBS:-$(nproc)}

mkdir -p "$W"
SRCROOT="$W/src/llama_cpp_python-0.3.36"
if [ ! -d "$SRCROOT" ]; then
    mkdir -p "$W/src"
    tar xzf "$SDIST" -C "$W/src"
    for p in "$REPO"/patches/*.patch; do
        (cd "$SRCROOT" && git apply --whitespace=nowarn "$p") || { echo "patch $p failed"; exit 2; }
        echo "applied $(basename "$p")"
    done
fi
SRC="$SRCROOT/vendor/llama.cpp"

status=0
for M in $MARCHS; do
    B="$W/build-${M//+/_}"
    cmake -S "$SRC" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
        -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
        -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH="$M" \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=ON > "$B.cmake.log"
    nice -n 10 ninja -C "$B" -j"$JOBS" llama 2>&1 | tee "$B.build.log" | tail -1
    grep -i -B2 -A4 "swift" "$B.build.log" | grep -i "warning\|error" || echo "no warnings/errors mentioning swift"
    EXE="$W/verify_${M//+/_}"
    nice -n 10 aarch64-linux-gnu-g++ -O2 -std=c++17 -march="$M" -Wall -I"$SRC/include" -I"$SRC/ggml/include" \
        "$REPO/tests/native/arm/verify_check.cpp" -o "$EXE" \
        "$B/src/libllama.a" "$B/ggml/src/libggml.a" "$B/ggml/src/libggml-cpu.a" "$B/ggml/src/libggml-base.a" \
        -static -fopenmp -lpthread 2>&1 | grep -v "dlopen\|dl_load_library" || true
    for model in $MODELS; do
        case $model in
            smollm) F="$MDIR/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
            gemma)  F=$(ls "$MDIR"/gemma-3-270m*.gguf | head -1) ;;
        esac
        [ -f "$F" ] || { echo "missing model $F, skipped"; continue; }
        if [ "${QUICK:-0}" = 1 ]; then
            GRID=("1 2 2 100,300 1,2,9,17 1" "0 1 2 300 1,2,9 0")
        else
            GRID=("1 2 2 100,300 1,2,5,9,17 1" "0 2 2 100,300 1,2,5,9,17 1" "1 1 2 300,510 1,2,9,17 0" "0 1 2 300 1,2,9,17 0")
        fi
        for g in "${GRID[@]}"; do
            echo "### $M $(basename "$F") fa/nt/ntb/L/n/control: $g"
            # shellcheck disable=SC2086
            $Q "$EXE" "$F" $g || status=1
        done
    done
done
exit $status
