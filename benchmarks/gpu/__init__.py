"""The GPU check (docs/gpu.md): one real DeGRPO step per backend, its memory and speed, and the loss check.

Split by what each part is for, so every file stays short:

- ``shapes``   the Qwen2.5-1.5B / 7B-shaped random checkpoints and their tokenizer (no hub access);
- ``inputs``   mixed-length prompts, the fake reward and the fixed batch of the loss check;
- ``worker``   one process per (shape, backend): import order, model loading, error capture;
- ``bench``    the timed ``DeGRPOTrainer.train()`` steps;
- ``verify``   the loss / gradient check (``--verify-loss``);
- ``report``   checks, targets, JSON summary and Markdown;
- ``cli``      the parent: arguments, one worker process per run, the time budget.

Run ``python -m benchmarks.gpu --help``;
``scripts/gpu_check.sh`` is the prepared run for a lent GPU machine. Importing this package imports
nothing heavy: the parent must not import transformers, and a worker must import Unsloth first.
"""
