#!/usr/bin/env bash
# The GPU check of docs/gpu.md in ONE call of the lent GPU machine (offline), parts in priority order:
#   install   the slim wheels carried in .whl/ (about 14 MiB; --download makes them) into /tmp/site;
#   (a)       imports, an Unsloth load of a tiny untied model, control rows trainable, one backward;
#   (b)       loss and gradient equality, hf vs the real Unsloth trainer, untied 1.5B shape, control rows too;
#   (c)       timed DeGRPO steps hf vs unsloth at 1.5B: step time, peak VRAM, generation tokens/s;
#   (d)       the same at 7B, only if enough of the budget is left.
# Each part has its own deadline inside --budget (default 480 s), so a late part never loses an earlier one,
# and the summary is rewritten after each. $OUT (else runs/gpu_step) gets three files: gpu_check.json
# (summary of every part), gpu_check.md (the tables) and gpu_check.log (everything printed, workers' logs too).
# Exit: 0 all passed and every run ended; 1 (a) or (b) FAILED (or did not run); 2 (a) and (b) passed but a
# timed run failed, ran out of memory or overran; 3 set-up failed (install, imports, no GPU).
set -uo pipefail

usage() {
  cat <<'EOF'
usage: bash scripts/gpu_check.sh [--no-install] [--budget SECONDS]
       bash scripts/gpu_check.sh --dry-run      # CPU: tiny shapes (tied and untied), every part, no install
       bash scripts/gpu_check.sh --download     # on a machine WITH network: the slim wheels into .whl/

  --no-install    use what is already importable (a machine set up with pip install -e '.[unsloth]')
  --install-only  install the wheels found under .whl/ into /tmp/site and stop
  --budget S      seconds from the start by which every part has ended (default 480)
env: OUT (results folder), PYTHON (python3), GPU_CHECK_SITE (/tmp/site), GPU_CHECK_WHEELS (.whl),
     GPU_CHECK_WORK (/tmp/gpu_check_work: checkpoints, 3.6 GB at 1.5B, 15 GB more for 7B),
     GPU_CHECK_DOWNLOADS (/tmp/gpu_check_wheels: the published wheels --download slims)
EOF
}

START=$(date +%s)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.whl}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
BUDGET=480
MODE=check
INSTALL=1

# The pinned wheels `import unsloth`, FastLanguageModel and our trainers need that the image lacks (docs/gpu.md
# says how the set was found). The image has torch, transformers, accelerate and the rest.
WHEEL_PINS=(bitsandbytes==0.50.2 trl==1.15.0 peft==0.21.2 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19
            fsspec==2026.2.0 cut_cross_entropy==25.1.1 unsloth==2026.10.9 unsloth_zoo==2026.10.9)
DOWNLOADS="${GPU_CHECK_DOWNLOADS:-/tmp/gpu_check_wheels}"

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
  "$PY" -m pip download -q "${P[@]}" -d "$DOWNLOADS" "${WHEEL_PINS[@]}" || exit 3
  rm -rf "$WHEELS"  # only the slim copies travel: bitsandbytes without its non-CUDA-13 libraries, unsloth without studio/
  (cd "$REPO" && "$PY" -m benchmarks.gpu.wheels "$DOWNLOADS" "$WHEELS") || exit 3
  du -sh "$WHEELS"
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
[ "$MODE" = install ] && { say "installed into $SITE"; exit 0; }

if [ "$MODE" = dry ]; then OUT_DIR="${OUT:-$REPO/runs/gpu_step}/dry-run"; else OUT_DIR="${OUT:-$REPO/runs/gpu_step}"; fi
mkdir -p "$OUT_DIR"
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

# Parts in priority order, each with its own deadline (seconds after the start, fractions of --budget), so a
# late part never costs an earlier one its result: (a) by 20%, (b) by 55%, (c) by 90%, (d) by 100%; a part
# that ends early leaves its time to the next. After every part the summary in $OUT_DIR is rewritten.
DEADLINE_A=$(( START + BUDGET * 20 / 100 )); DEADLINE_B=$(( START + BUDGET * 55 / 100 ))
DEADLINE_C=$(( START + BUDGET * 90 / 100 )); DEADLINE_D=$(( START + BUDGET ))
D_NEEDS=${GPU_CHECK_7B_NEEDS:-200}  # (d) starts only with this many seconds left: 15 GB checkpoint + 2 runs
if [ "$MODE" = dry ]; then
  SIZE=(--device cpu --threads 1 --prompt-len 16 --completion-len 8 --generations 4 --prompts 2 --grad-accum 2
        --steps 1)
  A_SHAPES=(--shapes tiny-untied); A_BACKENDS=hf,unsloth; B_SHAPES=(--shapes tiny-untied)
  C_SHAPES=(--shapes tiny); D_SHAPES=(--shapes tiny-untied); D_NEEDS=0
else
  # Shorter than the recipe (prompts up to 256, completions 2,048): prompts of 128 to 256 tokens, completions
  # of exactly 256, 4 prompts x 4 generations (the recipe's), 2 steps (the first is warm-up).
  SIZE=(--prompt-len 256 --completion-len 256 --generations 4 --prompts 4 --steps 2)
  A_SHAPES=(--shapes tiny-untied); A_BACKENDS=unsloth,hf; B_SHAPES=(--shapes 1.5b)
  # (c) at the T4 recipe's real shapes (configs/r1_distill_1.5b_t4.yaml): completions of the 1536-token cap,
  # 4 prompts x 4 answers, loss micro-batches of 2 (gradient accumulation 8), 2 steps; its report projects the
  # recipe's DeGRPO stage on this card and, by the bandwidth and fp16 ratios, on a T4 (PROJECTION lines).
  C_SHAPES=(--shapes 1.5b --completion-len 1536 --grad-accum 8); D_SHAPES=(--shapes 7b)
fi
PARTS=()
merge() {
  "$PY" -m benchmarks.gpu.report --merge "$OUT_DIR/gpu_check.json" "$OUT_DIR/gpu_check.md" "${PARTS[@]}" >/dev/null \
    || say "could not write the summary"
}
part() {  # part LABEL FILE DEADLINE ARGS...: one run of python -m benchmarks.gpu, its workers' logs, the summary
  local label="$1" file="$2" deadline="$3"; shift 3
  PARTS+=("$label=$file")
  say "$label: until +$(( deadline - START ))s"
  "$PY" -m benchmarks.gpu --work-dir "$WORK" --keep-work --stop-at "$deadline" "${SIZE[@]}" "$@" --out "$file" \
    --md "$file.md"  # the part's own arguments after SIZE: they win
  local rc=$?
  for log in "$WORK"/*/log.txt; do
    [ -f "$log" ] || continue
    echo "----- worker log $(basename "$(dirname "$log")") (last 80 lines)"; tail -n 80 "$log"; rm -f "$log"
  done
  "$PY" -m benchmarks.gpu.report "$file"
  merge
  return $rc
}
rm -rf "$WORK/parts"; mkdir -p "$WORK/parts"
part "(a) imports, Unsloth load, control rows" "$WORK/parts/a.json" "$DEADLINE_A" --load-only "${A_SHAPES[@]}" \
  --backends "$A_BACKENDS"
A_RC=$?
part "(b) loss and gradients, untied" "$WORK/parts/b.json" "$DEADLINE_B" --verify-loss "${B_SHAPES[@]}" \
  --backends hf,unsloth
B_RC=$?
# unsloth first: if the deadline cuts a run, it is hf's, not the Unsloth figure this check is for.
part "(c) timed DeGRPO steps" "$WORK/parts/c.json" "$DEADLINE_C" "${C_SHAPES[@]}" --backends unsloth,hf
C_RC=$?
D_RC=0
if [ $(( DEADLINE_D - $(date +%s) )) -ge "$D_NEEDS" ]; then
  part "(d) timed DeGRPO steps, 7B" "$WORK/parts/d.json" "$DEADLINE_D" "${D_SHAPES[@]}" --backends unsloth,hf
  D_RC=$?
else
  say "(d) 7B skipped: less than ${D_NEEDS}s left"
  PARTS+=("(d) timed DeGRPO steps, 7B (skipped: time)=$WORK/parts/d.json"); merge
fi
rm -rf "$WORK"
say "summary in $OUT_DIR/gpu_check.{json,md}"
if [ "$A_RC" != 0 ] || [ "$B_RC" != 0 ]; then say "load or loss check FAILED (exit 1)"; exit 1; fi
if [ "$C_RC" != 0 ] || [ "$D_RC" != 0 ]; then say "checks passed; a timed run failed (exit 2)"; exit 2; fi
say "done in $(( $(date +%s) - START )) s"
}

check 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
