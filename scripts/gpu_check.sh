#!/usr/bin/env bash
# The GPU check of docs/gpu.md in one run, for a lent GPU machine without network:
#   1. installs the wheels carried in .whl/ into /tmp/site (pip --no-index --no-deps --target);
#   2. --verify-loss on the 1.5B shape, hf and unsloth: DeGRPO loss and LoRA gradients, PASS / FAIL;
#   3. the timed DeGRPO steps on the 1.5B and 7B shapes, hf and unsloth: peak VRAM, step time, tok/s;
#   4. writes verify.{json,md}, bench.{json,md}, gpu_check.log and the workers' logs into $OUT
#      (else runs/gpu_step) and prints a short summary.
# Exit: 0 loss check PASS and every run ended; 1 loss check FAIL (or not run); 2 loss check PASS but a
# bench run failed, ran out of memory or overran; 3 set-up failed (install, imports, no GPU).
# Every run ends by --budget seconds after the start (default 540), so the whole call fits in 10 minutes.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: bash scripts/gpu_check.sh [--install-only] [--no-install] [--budget SECONDS]
       bash scripts/gpu_check.sh --dry-run      # CPU: tiny shape, no install, same phases (unsloth skipped)
       bash scripts/gpu_check.sh --download     # on a machine WITH network: fetch the wheels into .whl/

  --install-only  install the wheels found under .whl/ into /tmp/site and stop: the first of two calls
                  when the wheels are carried in two parts (.whl/part1, then .whl/part2)
  --no-install    use what is already importable (a machine set up with pip install -e '.[unsloth]')
  --budget S      seconds from the start by which every run has ended (default 540)
env: OUT (results folder), PYTHON (python3), GPU_CHECK_SITE (/tmp/site), GPU_CHECK_WHEELS (.whl),
     GPU_CHECK_WORK (/tmp/gpu_check_work: checkpoints, about 18 GB for both shapes)
EOF
}

START=$(date +%s)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.whl}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
BUDGET=540
MODE=check
INSTALL=1

# The pinned wheels, in the two parts that each fit the device tool's 64 MiB carry limit with the repo
# (part1 ~44 MiB, bitsandbytes being 41; part2 ~30 MiB). The image has torch, transformers, accelerate.
PART1=(bitsandbytes==0.50.2 trl==1.15.0 peft==0.21.2 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19
       fsspec==2026.2.0 cut_cross_entropy==25.1.1)
PART2=(unsloth==2026.10.9 unsloth_zoo==2026.10.9)

while [ $# -gt 0 ]; do
  case "$1" in
    --install-only) MODE=install ;;
    --dry-run) MODE=dry; INSTALL=0 ;;
    --download) MODE=download ;;
    --no-install) INSTALL=0 ;;
    --budget) BUDGET="${2:-}"; shift ;;
    --budget=*) BUDGET="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: --budget needs whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

say() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*"; }

if [ "$MODE" = download ]; then
  P=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  "$PY" -m pip download -q "${P[@]}" -d "$WHEELS/part1" "${PART1[@]}" || exit 3
  "$PY" -m pip download -q "${P[@]}" -d "$WHEELS/part2" "${PART2[@]}" || exit 3
  du -sh "$WHEELS/part1" "$WHEELS/part2"
  exit 0
fi

install_wheels() {
  local wheels=() new=() w
  mapfile -t wheels < <(find "$WHEELS" -type f -name '*.whl' 2>/dev/null | sort)
  if [ ${#wheels[@]} -eq 0 ]; then say "no wheels under $WHEELS: nothing to install"; return 0; fi
  mkdir -p "$SITE/.installed"
  for w in "${wheels[@]}"; do [ -e "$SITE/.installed/$(basename "$w")" ] || new+=("$w"); done
  if [ ${#new[@]} -eq 0 ]; then say "the ${#wheels[@]} wheels under $WHEELS are installed in $SITE"; return 0; fi
  say "installing ${#new[@]} wheels into $SITE"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
      --no-compile --upgrade --target "$SITE" "${new[@]}" || return 1
  else  # no pip on the image: a wheel is a zip of the installed files
    for w in "${new[@]}"; do "$PY" -m zipfile -e "$w" "$SITE" || return 1; done
  fi
  for w in "${new[@]}"; do touch "$SITE/.installed/$(basename "$w")"; done
}

if [ "$INSTALL" = 1 ]; then
  install_wheels || { say "installing the wheels failed"; exit 3; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
[ "$MODE" = install ] && { say "installed; run the check next (while this machine is still warm)"; exit 0; }

if [ "$MODE" = dry ]; then OUT_DIR="${OUT:-$REPO/runs/gpu_step}/dry-run"; else OUT_DIR="${OUT:-$REPO/runs/gpu_step}"; fi
mkdir -p "$OUT_DIR/logs"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false
cd "$REPO" || exit 3

check() {
say "preflight: $PY, results in $OUT_DIR, runs end by +${BUDGET}s"
"$PY" - "$MODE" <<'EOF' || exit 3
import importlib.metadata as md
import importlib.util
import sys

pinned = {"torch": None, "transformers": "5.17.0", "accelerate": "1.15.0", "bitsandbytes": "0.50.2", "trl": "1.15.0",
          "peft": "0.21.2", "datasets": "4.8.5", "unsloth": "2026.10.9", "unsloth_zoo": "2026.10.9"}
missing = []
for name, want in pinned.items():
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None or importlib.util.find_spec(name) is None:
        missing.append(name)
    flag = "" if have and (want is None or have == want) else f"   <- expected {want or 'a CUDA build'}"
    print(f"  {name:13s} {have or 'MISSING'}{flag}")
core = [m for m in missing if m not in ("unsloth", "unsloth_zoo")]  # without unsloth the loss check FAILs later
if core:
    sys.exit(f"gpu_check: missing {', '.join(core)}: carry the wheels (docs/gpu.md) or install them")
import torch  # noqa: E402

cuda = torch.cuda.is_available()
print(f"  python {sys.version.split()[0]}, CUDA GPU: {torch.cuda.get_device_name(0) if cuda else 'none'}")
if sys.argv[1] != "dry" and not cuda:
    sys.exit("gpu_check: torch sees no CUDA GPU (use --dry-run for the CPU path)")
EOF

STOP_AT=$(( START + BUDGET ))
if [ "$MODE" = dry ]; then
  SIZE=(--device cpu --threads 1 --prompt-len 16 --completion-len 8 --generations 4 --prompts 2 --grad-accum 2
        --steps 1)
  VERIFY_SHAPES=(--tiny); BENCH_SHAPES=(--tiny)
else
  # Shorter than the recipe (prompts up to 256, completions 2,048) so that both shapes fit: prompts of 128
  # to 256 tokens, completions of exactly 256, 2 prompts x 8 generations, 2 steps (the first is warm-up).
  SIZE=(--prompt-len 256 --completion-len 256 --generations 8 --prompts 2 --steps 2)
  VERIFY_SHAPES=(--shapes 1.5b); BENCH_SHAPES=(--shapes 1.5b,7b)
fi
COMMON=(--work-dir "$WORK" --keep-work --stop-at "$STOP_AT" "${SIZE[@]}")

say "1/2 loss check (--verify-loss): hf, then unsloth compared with it"
"$PY" -m benchmarks.gpu --verify-loss "${VERIFY_SHAPES[@]}" --backends hf,unsloth "${COMMON[@]}" \
  --out "$OUT_DIR/verify.json"
VERIFY_RC=$?
# unsloth first in each shape: if the budget cuts the last run, it is 7B hf, not the 7B Unsloth memory figure.
say "2/2 timed DeGRPO steps"
"$PY" -m benchmarks.gpu "${BENCH_SHAPES[@]}" --backends unsloth,hf "${COMMON[@]}" --out "$OUT_DIR/bench.json"
BENCH_RC=$?

for run in "$WORK"/*/; do
  [ -f "$run/log.txt" ] && cp "$run/log.txt" "$OUT_DIR/logs/$(basename "$run").log"
done
rm -rf "$WORK"
say "summary"
"$PY" -m benchmarks.gpu.report "$OUT_DIR/verify.json" "$OUT_DIR/bench.json"
if [ "$VERIFY_RC" != 0 ]; then say "loss check FAILED (exit 1)"; exit 1; fi
if [ "$BENCH_RC" != 0 ]; then say "loss check passed; a bench run failed (exit 2)"; exit 2; fi
say "done in $(( $(date +%s) - START )) s"
}

check 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
