"""GPU check: one real DeGRPO step per backend (hf = transformers + bitsandbytes NF4 + PEFT, unsloth =
Unsloth imported first, as the CLI does) on Qwen2.5-1.5B / 7B-shaped random checkpoints: peak memory,
step time, tokens/s; ``--verify-loss`` checks the loss and LoRA gradients instead (PASS / FAIL, exit 1).

    python benchmarks/gpu_step.py --tiny --device cpu --steps 1 --prompt-len 16 --completion-len 8 \\
        --generations 4 --grad-accum 2 --out runs/gpu_step/smoke.json      # CPU smoke run (unsloth skipped)
    python benchmarks/gpu_step.py --verify-loss --shapes 1.5b --out runs/gpu_step/verify.json
    python benchmarks/gpu_step.py --shapes 1.5b,7b --steps 3 --out runs/gpu_step/bench.json
    bash scripts/gpu_check.sh                                              # the prepared run on a lent GPU

The same as ``python -m benchmarks.gpu``; the code is in benchmarks/gpu/, what it measures and proves in
docs/gpu.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from benchmarks.gpu.cli import main

if __name__ == "__main__":
    sys.exit(main())
