#!/usr/bin/env bash
# The performance measurements of benchmarks/README.md in one run, on the GPU host (one GPU,
# ~6 min eager, plus the compiled rows' compilation): the TTD and plain training steps with
# profiles (default adapters, the last two image blocks only, and the step doing its own
# tokenisation and tag extraction as before 2026-12-02), the same compiled, the test-time
# protocol part by part with a profile of its two ends (and under CUDA graphs), the streamed
# loader with 15 workers, and the tiny CLIP's step. Every JSON lands in $OUT_DIR (default
# output/performance); a file that exists is not measured again, so an interrupted run resumes
# (run it again under a device command's 10-minute limit).
#   bash benchmarks/performance.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT_DIR=${1:-output/performance}
mkdir -p "$OUT_DIR"
run() {
  local name=$1; shift
  [ -f "$OUT_DIR/$name.json" ] && return 0
  echo "== $name"
  local script=$1; shift
  "$PY" "$script" --output "$OUT_DIR/$name.json" "$@"
}
run step_default benchmarks/bench_ttd_step.py --profile 5
run step_layers2 benchmarks/bench_ttd_step.py --skip-flops --profile 5 MODEL.TTD.LORA.IMAGE_LAYERS 2
run step_text_in_step benchmarks/bench_ttd_step.py --skip-flops --text-in-step
run eval_protocol benchmarks/bench_eval_protocol.py --config-file configs/Base-Paper-Eval.yaml --images 10 --warmup 2
run eval_profile benchmarks/bench_eval_protocol.py --config-file configs/Base-Paper-Eval.yaml --settings single +pamr \
  --images 6 --warmup 2 --profile 3
# torch.compile of the towers' blocks (MODEL.CLIP.COMPILE; the warm-up steps compile): inductor,
# then CUDA graphs (reduce-overhead), for the host-bound steps and the protocol's window forwards.
# 60 warm-up steps: a CUDA-graph tree records a graph per padded text shape, and 12 steps left
# shapes to record inside the timed loop (benchmarks/README.md, 2026-12-03); then the text blocks
# without CUDA graphs (COMPILE.TEXT_MODE default), the option for text shapes that keep changing
run step_default_compiled benchmarks/bench_ttd_step.py --skip-flops --profile 5 --warmup 60 MODEL.CLIP.COMPILE.MODE default
run step_default_cudagraphs benchmarks/bench_ttd_step.py --skip-flops --profile 5 --warmup 60 MODEL.CLIP.COMPILE.MODE reduce-overhead
run step_layers2_cudagraphs benchmarks/bench_ttd_step.py --skip-flops --profile 5 --warmup 60 MODEL.CLIP.COMPILE.MODE reduce-overhead MODEL.TTD.LORA.IMAGE_LAYERS 2
run step_default_cg_textdefault benchmarks/bench_ttd_step.py --skip-flops --profile 5 --warmup 30 MODEL.CLIP.COMPILE.MODE reduce-overhead MODEL.CLIP.COMPILE.TEXT_MODE default
run step_layers2_cg_textdefault benchmarks/bench_ttd_step.py --skip-flops --profile 5 --warmup 30 MODEL.CLIP.COMPILE.MODE reduce-overhead MODEL.CLIP.COMPILE.TEXT_MODE default MODEL.TTD.LORA.IMAGE_LAYERS 2
run eval_cudagraphs benchmarks/bench_eval_protocol.py --config-file configs/Base-Paper-Eval.yaml --images 10 --warmup 4 --compile reduce-overhead
# PAMR alone, eager against its Triton kernel (MODEL.SEG_INFERENCE.PAMR.KERNEL), then the full
# protocol with each: eagerly PAMR was about half of the protocol's kernel time
run pamr_kernels benchmarks/bench_pamr.py --classes 21 --triton-blocks 256,1 256,2 256,8 512,4
run eval_pamr_eager benchmarks/bench_eval_protocol.py --config-file configs/Base-Paper-Eval.yaml --settings +flip +pamr \
  --images 20 --warmup 4 --window-batch 32 --pamr-kernel eager --profile 3
run eval_pamr_triton benchmarks/bench_eval_protocol.py --config-file configs/Base-Paper-Eval.yaml --settings +flip +pamr \
  --images 20 --warmup 4 --window-batch 32 --pamr-kernel triton --profile 3
run stream_loader benchmarks/bench_stream_loader.py --workers 0 15 --samples 20000 --warmup 1000
# the synthetic tiny CLIP's pretraining step (the plain step) at 64 and 128 px: the 128 px lever of
# docs/RESULTS.md trained 15x slower than 64 px for 3.4x the FLOPs
for size in 64 128; do
  run "step_tiny$size" benchmarks/bench_ttd_step.py --config-file configs/synthetic/pretrain_tiny_clip.yaml \
    --arch "TinyCLIP-ViT-8-$size-avg.json" --image-size "$size" --batch-size 1024 --steps 10 --skip-flops --profile 3
done
