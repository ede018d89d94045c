#!/usr/bin/env bash
# The main job end to end: get a model, start the server, segment the bundled clip, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${VENV:-.venv}/bin
MODEL_DIR=${SEGSTREAM_MODEL_DIR:-models/onnx}
CLIP=${DEMO_CLIP:-samples/coco-pan.mp4}
OUT_DIR=${DEMO_OUT:-demo-out}
# 240 px keeps the full-size network at well under a second per frame on a 2-core CPU;
# the model card's 520 costs about 2 s per frame there (set DEMO_SIZE=520 on a GPU).
SIZE=${DEMO_SIZE:-240}

mkdir -p "$MODEL_DIR" "$OUT_DIR"
MODEL="$MODEL_DIR/fcn-resnet50-11.onnx"
if [ ! -f "$MODEL" ]; then
  echo "== fetching the real FCN-ResNet50 (141 MB)"
  if ! "$BIN/segstream-models" fetch fcn-resnet50 --dir "$MODEL_DIR" --timeout 15; then
    MODEL="$MODEL_DIR/fcn-resnet50-synthetic.onnx"
    echo
    echo "############################################################################"
    echo "# WARNING: the real model could not be downloaded (see above).             #"
    echo "# Using a synthetic FCN-ResNet50: the same network with RANDOM weights.    #"
    echo "# Speed is real; the MASKS ARE MEANINGLESS. Put fcn-resnet50-11.onnx into   #"
    echo "# $MODEL_DIR/ (or run 'segstream-models fetch' with network) for real masks.#"
    echo "############################################################################"
    echo
    [ -f "$MODEL" ] || "$BIN/segstream-models" build resnet50 --out "$MODEL"
  fi
fi

PORT=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== starting segstream-server on 127.0.0.1:$PORT (model $MODEL, size $SIZE)"
"$BIN/segstream-server" --model "fcn-resnet50=$MODEL" --host 127.0.0.1 --port "$PORT" --size "$SIZE" \
  --log-level WARNING &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

"$BIN/segstream-client" --server "127.0.0.1:$PORT" wait --timeout 300
echo "== segmenting $CLIP"
OUT="$OUT_DIR/$(basename "${CLIP%.*}")-segmented.mp4"
MASK="$OUT_DIR/$(basename "${CLIP%.*}")-mask.mp4"
"$BIN/segstream-client" --server "127.0.0.1:$PORT" video "$CLIP" --out "$OUT" --mask-out "$MASK"

kill -TERM $SERVER
wait $SERVER
trap - EXIT
echo "== annotated video written to $OUT (colour masks: $MASK)"
