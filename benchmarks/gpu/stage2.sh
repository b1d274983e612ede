#!/usr/bin/env bash
# Device call 2 (from the repo root, right after stage1.sh, carrying .gpukit/model.part2 and
# .gpukit/model.sha256): assemble and check the model, build the fixtures while the CUDA build
# finishes, wait for it (bounded), then run benchmarks/gpu/gpu_bench.py on the GPU (its default
# steps: bitwise, k1_swift, k3_swift, specbench, controls; flash attention on in the tables when the
# build has its kernels). Whole call bounded by GPU_BUDGET seconds (default 560, for timeout_s 600).
# Re-runnable on a warm machine: a model, fixtures and build already in /tmp/kit are kept. Extra
# gpu_bench arguments: GPU_BENCH_ARGS.
set -u
KIT=/tmp/kit
T0=$(date +%s)
BUDGET=${GPU_BUDGET:-560}
DEADLINE=$((T0 + BUDGET))
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
say() { echo "[stage2 +$(( $(date +%s) - T0 ))s] $*"; }
progress() { grep -o '^\[[0-9]*/[0-9]*\]' $KIT/build.log 2>/dev/null | tail -1; }

main() {
    if [ ! -d $KIT ] || [ ! -f $KIT/build.pid ]; then
        say "FATAL: $KIT is missing: the machine of call 1 was given back (it stays warm ~30 s)."
        say "Run call 1 (stage1.sh) again, then call 2 at once."
        return 3
    fi
    # -- model ---------------------------------------------------------------------------------
    want=$(cut -d' ' -f1 $KIT/model.sha256)
    if [ -f $KIT/model.gguf ] && [ -f $KIT/model.ok ]; then
        say "model already assembled"
    else
        [ -f .gpukit/model.part2 ] || { say "FATAL: .gpukit/model.part2 was not carried"; return 2; }
        cat $KIT/model.part1 .gpukit/model.part2 > $KIT/model.gguf.tmp
        got=$(sha256sum $KIT/model.gguf.tmp | cut -d' ' -f1)
        [ "$got" = "$want" ] || { say "FATAL: model sha256 $got, want $want"; return 2; }
        mv $KIT/model.gguf.tmp $KIT/model.gguf && touch $KIT/model.ok && rm -f $KIT/model.part1
        say "model assembled, sha256 ok ($want)"
    fi
    export PYTHONPATH=$KIT/py:$KIT/llama_cpp_parent:$PWD
    export PYTHONUNBUFFERED=1
    # -- fixtures (gguf + numpy only) while the build runs ----------------------------------------
    python3 -m benchmarks.gpu.gpu_bench --prepare-only --kit $KIT || { say "FATAL: fixtures"; return 2; }
    # -- wait for the build -------------------------------------------------------------------------
    last=0
    while [ ! -f $KIT/build.done ]; do
        now=$(date +%s)
        if ! kill -0 "$(cat $KIT/build.pid)" 2>/dev/null && [ ! -f $KIT/build.done ]; then
            say "FATAL: the build process died without build.done"; tail -40 $KIT/build.log; return 4
        fi
        if [ $now -ge $((DEADLINE - 120)) ]; then
            say "FATAL: build not done within the budget (at $(progress)); it keeps running while the"
            say "machine is warm: run call 2 again at once to continue"; tail -5 $KIT/build.log; return 4
        fi
        if [ $((now - last)) -ge 30 ]; then say "building: $(progress)"; last=$now; fi
        sleep 3
    done
    read -r brc bsecs < $KIT/build.done
    say "build finished: rc=$brc in ${bsecs}s"
    grep -E "CUDA Toolkit|CUDA host compiler|Including CUDA|cuBLAS|cublas" $KIT/build.log | head -8
    if [ "$brc" != 0 ]; then tail -60 $KIT/build.log; return 5; fi
    # -- the library ---------------------------------------------------------------------------------
    lib=$(find $KIT/build -name libllama.so | head -1)
    [ -n "$lib" ] || { say "FATAL: no libllama.so under $KIT/build"; return 5; }
    LIBDIR=$(dirname "$lib")
    if [ ! -e "$LIBDIR/libggml-cuda.so" ]; then   # gather the libraries in one folder
        mkdir -p $KIT/lib
        find $KIT/build -name 'lib*.so*' -exec cp -a {} $KIT/lib/ \;
        LIBDIR=$KIT/lib
    fi
    ls -la $LIBDIR/*.so
    export LLAMA_CPP_LIB_PATH=$LIBDIR
    export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    [ -f $KIT/extra_ld_path ] && export LD_LIBRARY_PATH=$(cat $KIT/extra_ld_path):$LD_LIBRARY_PATH
    ldd $LIBDIR/libggml-cuda.so | grep -E "not found|cublas|cudart|libcuda|stdc" || true
    python3 -c "import swift_gguf.native as n, llama_cpp; print('smoke:', n.library_path(), n.backends(), \
'gpu offload', n.gpu_offload_supported(), 'llama_cpp from', llama_cpp.__file__)" \
        || { say "FATAL: import swift_gguf.native failed"; return 6; }
    # -- the benchmark -------------------------------------------------------------------------------
    say "gpu_bench: $(( DEADLINE - 10 - $(date +%s) ))s to go"
    # shellcheck disable=SC2086
    # The library links libstdc++ statically (it crashed at model load otherwise, docs/build-notes.md);
    # a second, dynamic libstdc++ loaded by numpy/gguf/sklearn first then crashes std::regex in the
    # tokenizer (seen 2026-11-26 on an H200). Preloading the system one makes both the same copy.
    [ -f /lib/x86_64-linux-gnu/libstdc++.so.6 ] && export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
    FA=1
    [ "$(cat $KIT/build_fa.txt 2>/dev/null)" = OFF ] && FA=0
    python3 -m benchmarks.gpu.gpu_bench --out "$OUT" --kit $KIT --deadline $((DEADLINE - 10)) --flash-attn $FA \
        ${GPU_BENCH_ARGS:-}
    rc=$?
    say "gpu_bench rc=$rc; files: $(ls "$OUT" | tr '\n' ' ')"
    return $rc
}

main 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
