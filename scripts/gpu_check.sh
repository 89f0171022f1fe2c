#!/usr/bin/env bash
# The GPU checks in one go, for a Linux machine with an NVIDIA GPU (docs/shim.md, "On a
# GPU"; docs/regret.md, "A stronger chooser"). About 10 minutes once the packages are there:
#   1. the project's venv from the lock (make venv), then a CUDA build of torch and vLLM on
#      top (the lock holds the CPU torch, with which tests/gpu skips even on a GPU host);
#   2. tests/gpu: the cuda_tb shim under real PyTorch at rates 0.25 / 0.5 / 1, CUDA graph
#      launches included; a skip here is a failure;
#   3. a policy model served by vLLM (sair policy serve --backend vllm) and its regret
#      decomposition on a short grid (sair bench --regret --config), beside the rule's.
# Everything lands in $OUT_DIR (default runs/gpu-check): gpu_tests.log, shim table,
# vllm.log, regret/ (regret_summary.md), summary.md.
#
# Settings (environment):
#   MODEL       policy model for vLLM (default Qwen/Qwen2.5-0.5B-Instruct: a name
#               vLLM downloads, or a local path on a machine without network)
#   TORCH_SPEC  pip arguments for the CUDA torch (default: torch from PyTorch's cu124
#               index); WHEELS=DIR installs torch, vllm and their needs from DIR instead,
#               offline (pip --no-index --find-links DIR)
#   SKIP_VLLM=1 stop after the shim tests
#   HOURS, APPS, PATTERNS  the regret grid (default 0.1 h, nlp_analysis, poisson)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-runs/gpu-check}
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
TORCH_SPEC=${TORCH_SPEC:-"torch --index-url https://download.pytorch.org/whl/cu124"}
HOURS=${HOURS:-0.1}
APPS=${APPS:-nlp_analysis}
PATTERNS=${PATTERNS:-poisson}
PORT=${PORT:-8011}
PY=.venv/bin/python
mkdir -p "$OUT_DIR"
say() { echo "[gpu-check $(date -u +%H:%M:%S)] $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this machine has no NVIDIA driver"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | tee "$OUT_DIR/gpu.txt" >&2

say "1/3 venv from the lock, then CUDA torch${SKIP_VLLM:+ (no vLLM)}"
make venv >/dev/null
extra=(vllm)
[ -n "${SKIP_VLLM:-}" ] && extra=()
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --find-links "$WHEELS" torch "${extra[@]}"
else
  # shellcheck disable=SC2086  # TORCH_SPEC is a list of pip arguments
  $PY -m pip install -q $TORCH_SPEC
  [ ${#extra[@]} -gt 0 ] && $PY -m pip install -q "${extra[@]}"
fi
$PY - <<'EOF' || fail "torch does not see a CUDA device"
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
EOF

say "2/3 tests/gpu (the shim under real PyTorch)"
set +e
timeout 300 $PY -m pytest tests/gpu -m gpu -rs -v 2>&1 | tee "$OUT_DIR/gpu_tests.log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || fail "tests/gpu exited $rc (see $OUT_DIR/gpu_tests.log)"
grep -q "SKIPPED" "$OUT_DIR/gpu_tests.log" && fail "tests/gpu skipped on a GPU host"
timeout 120 $PY tests/gpu/test_gpu_shim.py --seconds 3 > "$OUT_DIR/shim_table.md"

if [ -n "${SKIP_VLLM:-}" ]; then
  say "done (SKIP_VLLM set): $OUT_DIR"
  exit 0
fi

say "3/3 vLLM policy server ($MODEL) and the regret decomposition"
.venv/bin/sair policy serve --backend vllm --model "$MODEL" --port "$PORT" \
    > "$OUT_DIR/vllm.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && break
  kill -0 $server 2>/dev/null || fail "vLLM server exited (see $OUT_DIR/vllm.log)"
  sleep 2
done
curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null || fail "vLLM not up after 6 minutes"
cat > "$OUT_DIR/policy.yaml" <<EOF
policy: {backend: vllm, url: "http://127.0.0.1:$PORT/v1", model: "$MODEL"}
EOF
timeout 600 .venv/bin/sair bench --regret --config "$OUT_DIR/policy.yaml" --apps "$APPS" \
    --patterns "$PATTERNS" --methods sair,sair-retrieval --seeds 1 --hours "$HOURS" \
    --out "$OUT_DIR/regret"
{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "GPU: $(cat "$OUT_DIR/gpu.txt")"
  echo
  echo "## cuda_tb shim under PyTorch"
  echo
  cat "$OUT_DIR/shim_table.md"
  echo
  echo "## Regret: $MODEL (vLLM) as the chooser beside the rule"
  echo
  cat "$OUT_DIR/regret/regret_summary.md"
} > "$OUT_DIR/summary.md"
say "done: $OUT_DIR/summary.md"
