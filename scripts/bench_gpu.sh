#!/usr/bin/env bash
# GPU tests and benchmarks, for a machine with an NVIDIA GPU (driver >= 580 for CUDA 13).
#
#   1. installs onnxruntime-gpu's CUDA/cuDNN libraries from PyPI (the nvidia-* wheels), the float16
#      converter, and, if it can, the TensorRT libraries the TensorRT provider was built against;
#   2. builds the synthetic FCN-ResNet50 (random weights, real cost) unless BENCH_GPU_MODEL is given;
#   3. runs the GPU tests (tests/gpu, marker gpu);
#   4. runs segstream-bench for CUDA and TensorRT, float32 and float16, batch 1 and 8, at the
#      inference shapes 520x520 and 1280x720;
# and appends to the results file (JSON lines): the machine's description, the test summary, and one
# line per benchmark run (its settings and segstream-bench's JSON, or why it failed).
#
# Settings (environment): VENV (.venv), BENCH_GPU_RESULTS (build/bench-gpu/results.jsonl),
# BENCH_GPU_MODEL (a .onnx to use instead of the synthetic ResNet-50), BENCH_GPU_DEVICES
# ("cuda tensorrt"), BENCH_GPU_PRECISIONS ("fp32 fp16"), BENCH_GPU_BATCHES ("1 8"),
# BENCH_GPU_SHAPES ("520x520 1280x720", WIDTHxHEIGHT), BENCH_GPU_STREAMS (8), BENCH_GPU_FRAMES (100),
# BENCH_GPU_INSTALL (1; 0 skips every pip install), BENCH_GPU_TENSORRT (1; 0 skips installing TensorRT).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${VENV:-.venv}/bin
PY=$BIN/python
OUT_DIR=build/bench-gpu
RESULTS=${BENCH_GPU_RESULTS:-$OUT_DIR/results.jsonl}
MODEL=${BENCH_GPU_MODEL:-$OUT_DIR/fcn-resnet50-synthetic.onnx}
DEVICES=${BENCH_GPU_DEVICES:-cuda tensorrt}
PRECISIONS=${BENCH_GPU_PRECISIONS:-fp32 fp16}
BATCHES=${BENCH_GPU_BATCHES:-1 8}
SHAPES=${BENCH_GPU_SHAPES:-520x520 1280x720}
STREAMS=${BENCH_GPU_STREAMS:-8}
FRAMES=${BENCH_GPU_FRAMES:-100}
TRT_CACHE=$OUT_DIR/trt-cache
mkdir -p "$OUT_DIR" "$(dirname "$RESULTS")" "$TRT_CACHE"

say() { echo "== $*" >&2; }

# Appends one JSON object to the results: KEY=VALUE adds a string, KEY:=VALUE a JSON value.
record() {
  "$PY" - "$RESULTS" "$@" <<'EOF'
import json, sys
path, *pairs = sys.argv[1:]
line = {}
for pair in pairs:
    key, _, value = pair.partition("=")
    if key.endswith(":"):
        key = key[:-1]
        try:
            value = json.loads(value)
        except ValueError:
            pass  # kept as text: the line still records what happened
    line[key] = value
with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(line, sort_keys=True) + "\n")
EOF
}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench-gpu: no NVIDIA GPU here (nvidia-smi is missing or finds no device); nothing to measure" >&2
  exit 2
fi
[ -x "$PY" ] || { echo "bench-gpu: no virtualenv at ${VENV:-.venv}: run 'make venv' first" >&2; exit 2; }

ORT_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')
ORT_CUDA=$("$PY" -c 'from onnxruntime.capi import build_and_package_info as b; print(getattr(b, "cuda_version", ""))')
CUDA_MAJOR=${ORT_CUDA%%.*}
if [ -z "$CUDA_MAJOR" ]; then
  echo "bench-gpu: onnxruntime-gpu $ORT_VERSION reports no CUDA version: is the CPU-only onnxruntime installed?" >&2
  exit 2
fi

# --- 1. libraries ---------------------------------------------------------------------------------
if [ "${BENCH_GPU_INSTALL:-1}" = 1 ]; then
  say "installing CUDA ${ORT_CUDA:-?} and cuDNN wheels for onnxruntime-gpu $ORT_VERSION, and onnxconverter-common"
  # Same onnxruntime-gpu version: only its extras (the nvidia-* wheels) are added. cuBLAS comes
  # with cuDNN's wheel; naming it keeps the install complete if that ever changes.
  "$PY" -m pip install --quiet "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION" \
    "nvidia-cublas>=$CUDA_MAJOR,<$((CUDA_MAJOR + 1))" "onnxconverter-common>=1.16"
fi

# The TensorRT provider library names the libnvinfer it needs (e.g. libnvinfer.so.10).
TRT_MAJOR=$("$PY" - <<'EOF'
import pathlib, re
import onnxruntime
lib = pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
found = re.search(rb"libnvinfer\.so\.(\d+)", lib.read_bytes()) if lib.exists() else None
print(found.group(1).decode() if found else "")
EOF
)
if [ "${BENCH_GPU_INSTALL:-1}" = 1 ] && [ "${BENCH_GPU_TENSORRT:-1}" = 1 ] && [ -n "$TRT_MAJOR" ]; then
  say "installing TensorRT $TRT_MAJOR libraries for CUDA $CUDA_MAJOR (tensorrt-cu$CUDA_MAJOR-libs)"
  "$PY" -m pip install --quiet "tensorrt-cu$CUDA_MAJOR-libs>=$TRT_MAJOR,<$((TRT_MAJOR + 1))" ||
    say "TensorRT libraries could not be installed; the TensorRT runs will say so"
fi

# Library folders of the nvidia-* and tensorrt wheels, for the provider libraries' own dependencies.
LIB_DIRS=$("$PY" - <<'EOF'
import importlib.util, pathlib
dirs = []
spec = importlib.util.find_spec("nvidia")
for root in (spec.submodule_search_locations or []) if spec else []:
    dirs += sorted(str(p) for p in pathlib.Path(root).glob("*/lib") if p.is_dir())
spec = importlib.util.find_spec("tensorrt_libs")
if spec and spec.origin:
    dirs.append(str(pathlib.Path(spec.origin).parent))
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH="${LIB_DIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

TRT_VERSION=$("$PY" - "$TRT_MAJOR" <<'EOF'
import ctypes, sys
major = sys.argv[1]
if not major:
    print("TensorRT libraries absent: this onnxruntime-gpu has no TensorRT provider")
    sys.exit()
try:
    version = ctypes.CDLL(f"libnvinfer.so.{major}").getInferLibVersion()
except OSError as exc:
    print(f"TensorRT libraries absent: {exc}")
else:
    print(f"{version // 10000}.{version // 100 % 100}.{version % 100}" if version > 99999 else
          f"{version // 1000}.{version // 100 % 10}.{version % 100}")
EOF
)
case "$TRT_VERSION" in "TensorRT libraries absent"*) TRT_OK=0 ;; *) TRT_OK=1 ;; esac

# --- machine --------------------------------------------------------------------------------------
IFS=',' read -r GPU_NAME DRIVER GPU_MEMORY < <(nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader | head -1 | sed 's/, /,/g')
DRIVER_CUDA=$(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | head -1 | cut -d' ' -f3 || true)
say "machine: $GPU_NAME, driver $DRIVER (CUDA ${DRIVER_CUDA:-?}), onnxruntime-gpu $ORT_VERSION, TensorRT: $TRT_VERSION"
record kind=machine time="$(date -u +%Y-%m-%dT%H:%M:%SZ)" host="$(hostname)" gpu="$GPU_NAME" \
  gpu_memory="$GPU_MEMORY" driver="$DRIVER" driver_cuda_version="${DRIVER_CUDA:-unknown}" \
  onnxruntime_version="$ORT_VERSION" onnxruntime_cuda_version="${ORT_CUDA:-unknown}" tensorrt_version="$TRT_VERSION" \
  cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //' || true)" cores:="$(nproc)"

# --- 2. model -------------------------------------------------------------------------------------
if [ ! -f "$MODEL" ]; then
  say "building the synthetic FCN-ResNet50 (random weights, real cost) into $MODEL"
  "$BIN/segstream-models" build resnet50 --out "$MODEL"
fi

# --- 3. GPU tests ---------------------------------------------------------------------------------
say "GPU tests"
set +e
"$BIN/pytest" -q -rs -m gpu -p no:cacheprovider tests/gpu | tee "$OUT_DIR/gpu-tests.log"
TESTS_RC=${PIPESTATUS[0]}
set -e
record kind=gpu_tests exit_code:="$TESTS_RC" summary="$(tail -1 "$OUT_DIR/gpu-tests.log")"

# --- 4. benchmarks --------------------------------------------------------------------------------
BENCH_HELP=$("$BIN/segstream-bench" --help 2>&1 || true)
bench_has() { grep -q -- "$1" <<<"$BENCH_HELP"; }

for device in $DEVICES; do
  if [ "$device" = tensorrt ] && [ "$TRT_OK" != 1 ]; then
    say "skipping TensorRT: $TRT_VERSION"
    record kind=bench device=tensorrt skipped="$TRT_VERSION"
    continue
  fi
  for precision in $PRECISIONS; do
    for batch in $BATCHES; do
      for shape in $SHAPES; do
        width=${shape%x*}
        height=${shape#*x}
        size=$((width < height ? width : height))
        streams=$((STREAMS > batch ? STREAMS : batch)) # batches only form with as many streams
        args=(--model "$MODEL" --device "$device" --max-batch "$batch" --size "$size"
          --streams "$streams" --frames "$FRAMES" --json)
        # The server runs exactly this inference shape (one bucket), whatever the frames' size.
        server_args=("--server-arg=--buckets=${height}x${width}")
        if [ "$precision" = fp16 ]; then
          if bench_has "--fp16"; then args+=(--fp16); else server_args+=("--server-arg=--fp16"); fi
        fi
        if [ "$device" = tensorrt ]; then server_args+=("--server-arg=--trt-cache-dir=$TRT_CACHE"); fi
        if bench_has "--frame-size"; then args+=(--frame-size "$shape"); fi
        say "segstream-bench $device $precision batch $batch ${width}x${height}"
        log="$OUT_DIR/bench-$device-$precision-b$batch-$shape.log"
        set +e
        "$BIN/segstream-bench" "${args[@]}" "${server_args[@]}" >"$log" 2>&1
        rc=$?
        set -e
        line=$(grep '^{' "$log" | tail -1 || true)
        if [ "$rc" = 0 ] && [ -n "$line" ]; then
          record kind=bench device="$device" precision="$precision" max_batch:="$batch" shape="$shape" \
            streams:="$streams" frames:="$FRAMES" result:="$line"
        else
          record kind=bench device="$device" precision="$precision" max_batch:="$batch" shape="$shape" \
            streams:="$streams" frames:="$FRAMES" error="exit $rc: $(tail -1 "$log")"
        fi
      done
    done
  done
done

say "results appended to $RESULTS (logs in $OUT_DIR)"
exit "$TESTS_RC"
