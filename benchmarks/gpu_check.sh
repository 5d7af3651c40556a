#!/usr/bin/env bash
# One call on the lent GPU machine (`make gpu-check`): build the extension, look at the machine code,
# verify every op against torch, time them against cuDNN, run the pytest suite on CUDA and
# compute-sanitizer memcheck. Logs go to $OUT (or /tmp/fastconv-gpu); a compact summary and the
# benchmark table are printed last. Whole run: under 9 minutes.
#   FASTCONV_GPU_PARTS=build,sass,bench,test,sanitize   (default, in this order; `make gpu-check`)
#   FASTCONV_GPU_PARTS=build,models,numba,check,racecheck     (`make gpu-check-models`: the second
#       call -- ResNet-18/50 and AlexNet against torch.compile, SORT's cost and block, numba.cuda vs
#       native, `python -m fastconv check` on CUDA (random shapes, every dtype, TF32 on and off),
#       compute-sanitizer racecheck of every op in fp16 on small shapes)
#   FASTCONV_GPU_BUDGET=520   seconds for everything; each part gets at most what is left
#   FASTCONV_BENCH_*          see benchmarks/gpu_bench.py (parts, layers, dtypes, batch)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-/tmp/fastconv-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PARTS=${FASTCONV_GPU_PARTS:-build,sass,bench,test,sanitize}
BUDGET=${FASTCONV_GPU_BUDGET:-520}
T0=$(date +%s)
SUMMARY=()
has() { [[ ",$PARTS," == *",$1,"* ]]; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }
# seconds for a part: its own cap, or what is left minus a reserve for the parts after it
slot() { local l; l=$(( $(left) - $2 )); (( l > $1 )) && l=$1; (( l < 10 )) && l=10; echo $l; }
note() { SUMMARY+=("$1"); echo "== $1"; }

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > "$OUT/gpu.txt" 2>&1
echo "gpu: $(tail -1 "$OUT/gpu.txt")"

if has build; then
  t=$(date +%s)
  if TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 FASTCONV_CUDA=1 timeout "$(slot 300 120)" \
      "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    note "build ok ($(( $(date +%s) - t )) s)"
  else
    tail -40 "$OUT/build.log"
    note "BUILD FAILED ($(( $(date +%s) - t )) s), see build.log"
    printf '%s\n' "${SUMMARY[@]}"
    exit 1
  fi
fi

if has sass; then
  # Are the tensor-core instructions, ldmatrix and cp.async there, and nothing spilled?
  {
    for o in $(find build -name '*_kernels.o' -path '*cuda*'); do
      echo "--- $o"
      cuobjdump -sass "$o" 2>/dev/null | grep -oE '\b(HMMA|HGMMA|LDSM|LDGSTS|LDL|STL|FFMA|DFMA)\b[.A-Z0-9_]*' | sort | uniq -c
    done
    echo "--- ptxas resource usage"
    for f in csrc/cuda/*_kernels.cu; do
      nvcc -gencode=arch=compute_90a,code=sm_90a -DFASTCONV_SM90A -std=c++17 --expt-relaxed-constexpr -O3 -Icsrc/include \
        -Xptxas -v -c "$f" -o /dev/null 2>&1 | grep -E 'Compiling entry|registers|spill|C75' | sed -E 's/ptxas info *: //'
    done
  } > "$OUT/sass.txt" 2>&1
  tc=$(find build -name 'conv2d_tc_kernels.o' | head -1)
  hmma=0; ldsm=0; hgmma=0
  if [ -n "$tc" ]; then
    hmma=$(cuobjdump -sass "$tc" 2>/dev/null | grep -c 'HMMA')
    hgmma=$(cuobjdump -sass "$tc" 2>/dev/null | grep -c 'HGMMA')
    ldsm=$(cuobjdump -sass "$tc" 2>/dev/null | grep -c LDSM)
  fi
  serial=$(grep -c 'C7515\|C7510\|serialized' "$OUT/sass.txt")
  spills=$(grep -c 'bytes spill stores' "$OUT/sass.txt"); nz=$(grep -E '[1-9][0-9]* bytes spill stores' "$OUT/sass.txt" | wc -l)
  command -v cuobjdump > /dev/null || { hmma="? (no cuobjdump)"; ldsm="?"; }
  [ -z "$tc" ] && { hmma="? (no conv2d_tc_kernels.o under build/)"; ldsm="?"; }
  note "sass: conv2d_tc HMMA=$hmma HGMMA=$hgmma LDSM=$ldsm; wgmma serialization warnings: $serial; kernels with spills: $nz of $spills (sass.txt)"
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if has bench; then
  t=$(date +%s)
  s=$(slot 300 100)
  # its own budget ends 20 s before the hard timeout: what is left is skipped, the table still printed
  FASTCONV_BENCH_OUT="$OUT" FASTCONV_BENCH_BUDGET=$((s - 20)) timeout "$s" "$PY" benchmarks/gpu_bench.py \
    > "$OUT/bench.log" 2>&1
  rc=$?
  note "bench rc=$rc ($(( $(date +%s) - t )) s): $(grep -E '^(verification:|NOT RUN)' "$OUT/bench.log" | tr '\n' ' ')"
fi

if has test; then
  t=$(date +%s)
  # fp32 on CUDA must be exact in the suite: TF32 off (it is checked on its own in gpu_bench verify).
  timeout "$(slot 200 60)" "$PY" -c "
import sys, torch, pytest
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', 'tests']))" > "$OUT/pytest.log" 2>&1
  rc=$?
  note "pytest rc=$rc ($(( $(date +%s) - t )) s): $(tail -1 "$OUT/pytest.log")"
  [ $rc -ne 0 ] && grep -E '^(FAILED|ERROR)|Error' "$OUT/pytest.log" | head -8
fi

if has sanitize; then
  t=$(date +%s)
  # No caching allocator: every tensor its own allocation, so out-of-bounds accesses are caught.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(slot 150 5)" compute-sanitizer --tool memcheck --error-exitcode 3 \
    --print-limit 20 "$PY" benchmarks/gpu_bench.py --smoke > "$OUT/memcheck.log" 2>&1
  rc=$?
  note "memcheck rc=$rc ($(( $(date +%s) - t )) s): $(grep -E 'ERROR SUMMARY|smoke:' "$OUT/memcheck.log" | tr '\n' ' ')"
fi

if has models; then
  t=$(date +%s)
  OUT="$OUT" timeout "$(slot 400 100)" "$PY" benchmarks/gpu_models.py > "$OUT/models.log" 2>&1
  rc=$?
  note "models rc=$rc ($(( $(date +%s) - t )) s), models.log"
fi

if has numba; then
  t=$(date +%s)
  timeout "$(slot 200 5)" "$PY" benchmarks/numba_bench.py --device cuda --batch 32 --repeats 11 \
    --json "$OUT/numba_gpu.json" > "$OUT/numba.log" 2>&1
  rc=$?
  note "numba rc=$rc ($(( $(date +%s) - t )) s), numba.log"
fi

if has check; then
  t=$(date +%s)
  timeout "$(slot 90 60)" "$PY" -m fastconv check --device cuda --cases 12 > "$OUT/check.log" 2>&1
  rc=$?
  note "check rc=$rc ($(( $(date +%s) - t )) s): $(tail -1 "$OUT/check.log")"
  [ $rc -ne 0 ] && grep -vE ' 0 +[0-9.]+$' "$OUT/check.log" | head -12
fi

if has racecheck; then
  t=$(date +%s)
  # Shared-memory hazards (the tensor-core rings, the reductions); fp16 only: racecheck is slow.
  FASTCONV_SMOKE_DTYPES=fp16 timeout "$(slot 120 5)" compute-sanitizer --tool racecheck --error-exitcode 3 \
    --print-limit 20 "$PY" benchmarks/gpu_bench.py --smoke > "$OUT/racecheck.log" 2>&1
  rc=$?
  note "racecheck rc=$rc ($(( $(date +%s) - t )) s): $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|smoke:' "$OUT/racecheck.log" | tr '\n' ' ')"
fi

echo
echo "==== summary ($(( $(date +%s) - T0 )) s, logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}"
if [ -f "$OUT/bench.log" ]; then
  echo
  sed -n '/^total /,$p' "$OUT/bench.log" | tail -n +2
  grep -E 'FAIL|Error|error' "$OUT/bench.log" | head -10
fi
if [ -f "$OUT/models.log" ]; then
  echo
  sed -n '/^total /,$p' "$OUT/models.log" | tail -n +2
  grep -E 'Error|error' "$OUT/models.log" | head -5
fi
if [ -f "$OUT/numba.log" ]; then
  echo
  grep -A40 '^first call' "$OUT/numba.log" | head -60
  grep -E 'Error|error' "$OUT/numba.log" | head -5
fi
