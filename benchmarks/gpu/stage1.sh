#!/usr/bin/env bash
# Device call 1 (from the repo root, carrying .gpukit/src.tar.xz, .gpukit/wheels, .gpukit/model.part1,
# .gpukit/model.sha256): unpack the kit to /tmp/kit, install the wheels to /tmp/kit/py, keep
# model.part1, and start the CUDA build of libllama in the background (setsid, so it outlives
# this call). Returns in ~20 s. Call 2 (stage2.sh) must follow while the machine is warm.
# The build has flash-attention kernels (GGML_CUDA_FA=ON, f16/q4_0/q8_0 K/V only: FA_ALL_QUANTS=OFF,
# sm_90 only; ~4 min with 16 cores, estimated: 157 s were measured without them); GPU_FA_BUILD=OFF
# builds without them (~2.6 min; flash attention then runs on the CPU, so keep it off in the runs).
set -u
KIT=/tmp/kit
T0=$(date +%s)
say() { echo "[stage1 +$(( $(date +%s) - T0 ))s] $*"; }

say "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || nvidia-smi
echo "nproc $(nproc); $(python3 -V 2>&1) at $(command -v python3); $(uname -r)"
export PATH=$PATH:/usr/local/cuda/bin
echo "nvcc: $(command -v nvcc) $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*')"
echo "$(cmake --version | head -1); ninja $(ninja --version); $(g++ --version | head -1)"
free -g | sed -n 2p; df -h /tmp | tail -1

if [ -f $KIT/build.pid ] && kill -0 "$(cat $KIT/build.pid)" 2>/dev/null && [ ! -f $KIT/build.done ]; then
    say "a build is already running (pid $(cat $KIT/build.pid)); leaving it"; tail -3 $KIT/build.log; exit 0
fi
for f in .gpukit/src.tar.xz .gpukit/model.part1 .gpukit/model.sha256; do
    [ -f "$f" ] || { say "FATAL: $f was not carried"; exit 2; }
done
rm -rf $KIT
tar xJf .gpukit/src.tar.xz -C /tmp 2>/dev/null \
    || python3 -c "import tarfile; tarfile.open('.gpukit/src.tar.xz').extractall('/tmp')" || { say "FATAL: unpack"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $KIT/py .gpukit/wheels/*.whl \
    || { say "FATAL: wheels"; exit 2; }
cp .gpukit/model.part1 .gpukit/model.sha256 $KIT/
cat $KIT/KIT_INFO.json; echo

FA_BUILD=${GPU_FA_BUILD:-ON}
cat > $KIT/build.sh <<EOF_VARS
FA_BUILD=$FA_BUILD
EOF_VARS
cat >> $KIT/build.sh <<'EOF'
#!/usr/bin/env bash
# CUDA build of libllama (+ libggml*), library only; writes build.done = "<exit status> <seconds>".
set -u
KIT=/tmp/kit
export PATH=$PATH:/usr/local/cuda/bin
start=$(date +%s)
NOAMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"   # AMX matmul path segfaults (docs/build-notes.md)
ARGS=(-G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=$FA_BUILD -DGGML_CUDA_FA_ALL_QUANTS=OFF
      -DCMAKE_BUILD_TYPE=Release
      -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_OPENSSL=OFF
      "-DCMAKE_SHARED_LINKER_FLAGS=-static-libstdc++ -static-libgcc")
echo "${ARGS[*]} -DCMAKE_C_FLAGS/-DCMAKE_CXX_FLAGS=$NOAMX" > $KIT/build_flags.txt
echo "$FA_BUILD" > $KIT/build_fa.txt
echo "== configure"
cmake -S $KIT/llama.cpp -B $KIT/build "${ARGS[@]}" "-DCMAKE_C_FLAGS=$NOAMX" "-DCMAKE_CXX_FLAGS=$NOAMX"
rc=$?
if [ $rc != 0 ]; then
    # fallback: cuBLAS from the Python nvidia-cublas package when the toolkit has none
    lib=$(python3 -c "import glob,site;print(next(iter(sorted(p for s in site.getsitepackages() for p in glob.glob(s+'/nvidia/**/libcublas.so*',recursive=True))),''))")
    if [ -n "$lib" ]; then
        d=$(dirname "$lib"); inc=$(dirname "$d")/include
        lt=$(ls "$d"/libcublasLt.so* | head -1)
        echo "== configure again with cuBLAS from $d (include $inc)" | tee $KIT/build_fallback.txt
        echo "$d" > $KIT/extra_ld_path
        rm -rf $KIT/build
        cmake -S $KIT/llama.cpp -B $KIT/build "${ARGS[@]}" "-DCMAKE_C_FLAGS=$NOAMX" \
            "-DCMAKE_CXX_FLAGS=$NOAMX -I$inc" "-DCMAKE_CUDA_FLAGS=-I$inc" \
            "-DCUDA_cublas_LIBRARY=$lib" "-DCUDA_cublasLt_LIBRARY=$lt"
        rc=$?
    fi
fi
if [ $rc = 0 ]; then
    echo "== build"
    ninja -C $KIT/build -j16 llama
    rc=$?
fi
if [ $rc != 0 ] && [ "$FA_BUILD" = ON ]; then
    # the flash-attention kernels failed to build: the rest of the measurements need none of them
    echo "== build with flash attention kernels FAILED (rc=$rc); building again without them" | tee $KIT/build_fallback_fa.txt
    echo OFF > $KIT/build_fa.txt
    ARGS=("${ARGS[@]/-DGGML_CUDA_FA=ON/-DGGML_CUDA_FA=OFF}")
    echo "${ARGS[*]} (fallback)" >> $KIT/build_flags.txt
    extra=()
    [ -f $KIT/extra_ld_path ] && extra=("-DCMAKE_CXX_FLAGS=$NOAMX -I$inc" "-DCMAKE_CUDA_FLAGS=-I$inc"
                                       "-DCUDA_cublas_LIBRARY=$lib" "-DCUDA_cublasLt_LIBRARY=$lt")
    cmake -S $KIT/llama.cpp -B $KIT/build "${ARGS[@]}" "-DCMAKE_C_FLAGS=$NOAMX" "-DCMAKE_CXX_FLAGS=$NOAMX" "${extra[@]}" \
        && ninja -C $KIT/build -j16 llama
    rc=$?
fi
echo "$rc $(( $(date +%s) - start ))" > $KIT/build.done.tmp && mv $KIT/build.done.tmp $KIT/build.done
echo "== build finished: rc=$rc in $(( $(date +%s) - start ))s"
EOF
setsid nohup bash $KIT/build.sh > $KIT/build.log 2>&1 < /dev/null &
echo $! > $KIT/build.pid
say "CUDA build started in the background (pid $(cat $KIT/build.pid), log $KIT/build.log)"

PYTHONPATH=$KIT/py python3 -c "import gguf, skopt, diskcache, numpy, sklearn, scipy, jinja2; \
print('py deps ok: gguf', gguf.__file__, 'numpy', numpy.__version__, 'sklearn', sklearn.__version__, 'scipy', scipy.__version__)"
sleep 12
say "build so far:"; tail -4 $KIT/build.log
say "done; run call 2 (stage2.sh) now"
