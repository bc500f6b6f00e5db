"""Bad input gets a clear error and loses nothing: one test per kind of bad input.

Data (through ``thinkless_lite.stages.rl.rl_items``, the RL stage's reader): rows without question or answer,
``null`` answers in the real MATH train copy, non-UTF-8 bytes, empty files, a column mapping naming
missing columns, and a failed start on bad data leaving an existing run untouched. A tokenizer without a chat
template, a completion without a control token, answers that would hang the symbolic checker, a NaN loss in a
real training run, and CUDA out-of-memory. Bad command lines and recipes (typos included) are
``test_bad_input_cli``'s.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from thinkless_lite.stages import rl, warmup
from thinkless_lite.callbacks import (COMPLETE_MARKER, NonFiniteLossError, explain_out_of_memory,
                                      last_complete_checkpoint, read_metrics)
from thinkless_lite.config import ModelConfig, load_config
from thinkless_lite.data.files import ColumnMappingError, DataFileError, NoUsableRowsError



def rl_cfg(source, *extra):
    return load_config(None, [f"rl.data.source={source}", *extra])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- data files

def test_rows_without_question_or_answer_are_skipped_and_counted(tmp_path, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question": "1+2", "answer": "3"},
        {"question": "4*2", "answer": 8},
        {"question": "9-9"},                      # no answer key
        {"answer": "5"},                          # no question key
        {"question": "  ", "answer": "1"},        # blank question
        {"question": "7+1", "answer": None},      # null answer
        {"question": "2*2", "answer": "4"},
    ])
    with caplog.at_level("WARNING"):
        items = rl.rl_items(rl_cfg(path))
    assert [(it.question, it.gold) for it in items] == [("1+2", "3"), ("4*2", "8"), ("2*2", "4")]
    report = caplog.text
    # A key absent from a row reads as None (files become Arrow tables, every row has every column).
    assert "kept 3 of 7 rows; skipped 4 (answer is None: 2, question is None: 1, question is empty: 1)" in report

    nothing = write_jsonl(tmp_path / "useless.jsonl", [{"question": "1+2"}, {"question": "", "answer": "1"}])
    with pytest.raises(NoUsableRowsError, match=r"no usable rows - all 2 were skipped \(answer is None: 1, "
                                                r"question is empty: 1\)"):
        rl.rl_items(rl_cfg(nothing))


def test_null_answers_in_the_math_train_copy_are_skipped(benchmarks_dir, caplog):
    """The copy has two ``null`` answers (and two empty ones): skipped, counted by reason, nothing else lost."""
    source = benchmarks_dir / "deepscaler_train" / "math.json"
    with caplog.at_level("WARNING"):
        items = rl.rl_items(rl_cfg(source, "rl.data.question_column=problem", "rl.data.num_examples=100000"))
    assert len(items) == 7470
    assert all(it.gold and it.gold != "None" for it in items)
    assert "kept 7470 of 7474 rows; skipped 4 (answer is None: 2, answer is empty: 2)" in caplog.text
    questions = {it.question for it in items}
    assert not any(q.startswith("What is the largest value of $x$, if $\\frac{x}{5}") for q in questions)


def test_a_file_that_is_not_utf8_names_the_place_and_the_fix(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "1+2", "answer": "3"}\n{"question": "caf\xe9 2+2", "answer": "4"}\n')
    with pytest.raises(DataFileError, match=r"not valid UTF-8 at byte offset \d+ \(line 2, column \d+: "
                                            r"byte\(s\) 0xe9\).*iconv"):
        rl.rl_items(rl_cfg(path))


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", "the file is empty (0 bytes)"),
    ("blank.jsonl", b"\n  \n", "the file is empty (only whitespace)"),
    ("empty.json", b"[]", "the file holds no rows"),
    ("empty.csv", b"question,answer\n", "the file holds no rows"),
])
def test_an_empty_file_is_refused(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataFileError) as err:
        rl.rl_items(rl_cfg(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_column_mapping_naming_missing_columns_lists_what_is_there(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [{"problem": "1+2", "solution": "3", "level": 1}])
    with pytest.raises(ColumnMappingError) as err:
        rl.rl_items(rl_cfg(path))  # defaults: question / answer
    message = str(err.value)
    assert "'question'" in message and "'answer'" in message  # what is missing
    assert "'problem', 'solution', 'level'" in message  # what is there
    assert "did you mean 'problem'?" in message and "did you mean 'solution'?" in message


@pytest.mark.parametrize("stage", ["warmup", "rl"])
def test_a_failed_start_on_bad_data_loses_nothing(tiny_model_dir, tmp_path, stage):
    """An existing run, started again on an empty data file: the error comes, every file of the run stays."""
    common = [f"model.name_or_path={tiny_model_dir}", "model.backend=hf", "model.lora_r=4", "model.lora_alpha=8",
              "threads=1", "warmup.max_steps=2", "warmup.save_steps=1", "warmup.data.num_examples=8",
              "warmup.per_device_train_batch_size=4", "rl.max_steps=2", "rl.save_steps=1", "rl.num_generations=2",
              "rl.mode_balance=1.0", "rl.prompts_per_step=2", "rl.max_completion_length=4", "rl.data.num_examples=8", "rl.beta=0.0",
              f"output_dir={tmp_path}", "name=run"]
    main = warmup.main if stage == "warmup" else rl.main
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(load_config(None, common))
    folder = tmp_path / "run" / stage

    def snapshot():
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot()
    assert {"checkpoints/checkpoint-2/checkpoint_complete", "metrics.jsonl", "resolved.yaml"} <= set(before)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    bad = (["warmup.data.source=paired", f"warmup.data.path={empty}", "warmup.data.response_column=text",
            "warmup.max_steps=4"] if stage == "warmup" else [f"rl.data.source={empty}", "rl.max_steps=4"])
    with warnings.catch_warnings(), pytest.raises(DataFileError, match="the file is empty"):
        warnings.simplefilter("ignore")
        main(load_config(None, common + bad))
    assert snapshot() == before


# ---------------------------------------------------------------- tokenizer

def test_a_tokenizer_without_chat_template_gets_the_fallback_and_a_warning(tiny_model_dir):
    from transformers import AutoTokenizer

    from thinkless_lite.vocabulary import prepare_tokenizer
    from thinkless_lite.tokens import FALLBACK_CHAT_TEMPLATE, format_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.warns(UserWarning, match="no chat template; using a ChatML fallback"):
        prepare_tokenizer(tokenizer, ModelConfig())
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert format_prompt(tokenizer, "3+4") == "<|im_start|>user\n3+4<|im_end|>\n<|im_start|>assistant\n"
    for token in ("<short>", "<think>", "</think>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1


# ---------------------------------------------------------------- completions without a control token

def test_a_completion_without_control_token_is_a_format_error_counted_by_the_trainer(tiny_model_dir, tmp_path):
    from datasets import Dataset

    from conftest import degrpo_args
    from thinkless_lite.model import load_model
    from thinkless_lite.rewards import RewardTable, score_completion
    from thinkless_lite.tokens import format_prompt
    from thinkless_lite.trainers import DeGRPOTrainer
    from thinkless_lite.rewards import ThinklessReward

    table = RewardTable(format_error=-2.0)
    for text in ["7", "The answer is 7.", "", "<think>7 is it", " so <short>7"]:
        scored = score_completion(text, "7", table)
        assert scored.format_error and scored.reward == -2.0 and not scored.correct, text

    class HalfWithoutControlToken(ThinklessReward):
        """Even completions answer "<short>gold"; odd ones are the model's text behind words (no control token)."""

        def __call__(self, completions, **kwargs):
            texts = [f"<short>{g}" if i % 2 == 0 else f"well, {c}"
                     for i, (c, g) in enumerate(zip(completions, kwargs["answer"]))]
            return super().__call__(texts, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8))
    prompts = [format_prompt(loaded.tokenizer, q) for q in ["1+2", "3*4"]]
    dataset = Dataset.from_list([{"prompt": p, "answer": a} for p, a in zip(prompts, ["3", "2"])])
    recorder = HalfWithoutControlToken(table, ModelConfig().control_tokens)
    args = degrpo_args(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                       max_completion_length=6, loss_type="dapo", scale_rewards="none", beta=0.0, use_cpu=True,
                       report_to="none", seed=0, max_steps=1, logging_steps=1)
    trainer = DeGRPOTrainer(model=loaded.model, reward_funcs=[recorder], args=args, train_dataset=dataset,
                            processing_class=loaded.tokenizer, recorder=recorder)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    rows = [dataset[i] for i in range(2) for _ in range(4)]
    trainer._generate_and_score_completions(rows)
    assert [o.reward for o in recorder.last_outcomes] == [1.0, -2.0] * 4
    trainer.log({})  # transformers' logging hook: the step's metrics join the log
    logged = trainer.state.log_history[-1]
    assert logged["format_error_rate"] == 0.5
    assert logged["accuracy"] == 0.5 and logged["think_ratio"] == 0.0


# ---------------------------------------------------------------- the symbolic checker

def test_answers_that_hang_the_symbolic_checker_cost_bounded_time_from_many_threads():
    from thinkless_lite.grading import grade_answer

    assert grade_answer("\\sqrt{4}", "2", timeout_s=30.0)  # warm a worker: its start-up is not a grading deadline
    timeout_s, threads = 1.0, 6
    pathological = [("5", "9^{9^{9^{9^{9}}}}"), ("\\boxed{9^{9^{9^{9^{9}}}}}", "7^{7^{7^{7^{7}}}}")]
    ticks = []
    stop = threading.Event()

    def ticker():  # the calling process stays responsive meanwhile
        while not stop.wait(0.05):
            ticks.append(time.monotonic())

    def grade(i):
        began = time.monotonic()
        verdict = grade_answer(*pathological[i % 2], timeout_s=timeout_s)
        return verdict, time.monotonic() - began

    beat = threading.Thread(target=ticker, daemon=True)
    beat.start()
    began = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = [f.result(timeout=120) for f in [pool.submit(grade, i) for i in range(threads)]]
    finally:
        stop.set()
    wall = time.monotonic() - began
    print(f"{threads} pathological gradings from {threads} threads: wall {wall:.1f}s, "
          f"each {[round(s, 1) for _, s in results]}")
    assert [verdict for verdict, _ in results] == [False] * threads
    # Each call: at most timeout_s waiting for a free worker + a worker restart (if it took over a killed one)
    # + timeout_s of work. The restart is a fresh interpreter importing sympy: allow it 25 s on a busy machine.
    assert all(seconds < 2 * timeout_s + 25 for _, seconds in results)
    assert wall < 2 * timeout_s + 25
    assert len(ticks) >= wall / 0.05 * 0.5  # the main process never stalled
    assert grade_answer("\\frac{1}{2}", "0.5", timeout_s=30.0)  # and the checker still works afterwards


# ---------------------------------------------------------------- NaN / inf loss

def nan_cfg(tiny_model_dir, tmp_path, *extra):
    return load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.backend=hf", "model.lora_r=4",
                              "model.lora_alpha=8", "warmup.max_steps=8", "warmup.save_steps=2",
                              "warmup.data.num_examples=40", "warmup.per_device_train_batch_size=4",
                              f"output_dir={tmp_path}", "name=nan", "threads=1", *extra])


@pytest.fixture
def loss_turns_nan_at_step_3(monkeypatch):
    """A real warm-up run whose loss is NaN from the third optimizer step on."""

    from thinkless_lite import trainers

    class NaNFromStep3(trainers.PortableSFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
            if self.state.global_step >= 2:  # steps 1 and 2 are done: this is step 3
                loss = loss * float("nan")
            return loss

    monkeypatch.setattr(trainers, "PortableSFTTrainer", NaNFromStep3)


def assert_good_checkpoint_kept(tmp_path):
    checkpoints = tmp_path / "nan" / "warmup" / "checkpoints"
    good = last_complete_checkpoint(checkpoints, remove_incomplete=False)
    assert good == str(checkpoints / "checkpoint-2")
    assert not (checkpoints / "checkpoint-4" / COMPLETE_MARKER).exists()
    from safetensors.torch import load_file

    weights = load_file(str(checkpoints / "checkpoint-2" / "adapter_model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "nan" / "warmup" / "adapter").exists()  # no poisoned final adapter either


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path, monkeypatch,
                                                                      loss_turns_nan_at_step_3):
    with warnings.catch_warnings(), pytest.raises(NonFiniteLossError) as err:
        warnings.simplefilter("ignore")
        warmup.main(nan_cfg(tiny_model_dir, tmp_path, "warmup.logging_steps=1"))
    message = str(err.value)
    assert "loss became nan at step 3" in message and "last good checkpoint" in message
    assert "Lower the learning rate (warmup.learning_rate / rl.learning_rate) and run the same command" in message
    assert_good_checkpoint_kept(tmp_path)
    rows = [r for r in read_metrics(tmp_path / "nan" / "warmup" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)  # the log holds good steps only

    # What the message says to do: a lower learning rate, the same command. It resumes at the good checkpoint.
    monkeypatch.undo()  # the data is fine again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = warmup.main(nan_cfg(tiny_model_dir, tmp_path, "warmup.logging_steps=1",
                                      "warmup.learning_rate=1e-4", "warmup.lr_scheduler_type=constant"))
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 8
    rows = [r for r in read_metrics(tmp_path / "nan" / "warmup" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["learning_rate"] for r in rows[2:]] == pytest.approx([1e-4] * 6)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_a_nan_between_two_logs_never_marks_the_poisoned_checkpoint(tiny_model_dir, tmp_path,
                                                                    loss_turns_nan_at_step_3):
    """Logging every 5 steps, saving every 2: checkpoint-4 is written before any log could show the NaN."""
    with warnings.catch_warnings(), pytest.raises(NonFiniteLossError, match="step 4"):
        warnings.simplefilter("ignore")
        warmup.main(nan_cfg(tiny_model_dir, tmp_path, "warmup.logging_steps=5"))
    assert_good_checkpoint_kept(tmp_path)


# ---------------------------------------------------------------- CUDA out of memory

def test_out_of_memory_names_the_knobs_to_lower():
    with pytest.raises(RuntimeError) as err, explain_out_of_memory("rl.num_generations, rl.max_completion_length"):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not isinstance(err.value, torch.cuda.OutOfMemoryError)
    assert isinstance(err.value.__cause__, torch.cuda.OutOfMemoryError)
    message = str(err.value)
    assert message.startswith("CUDA ran out of memory. Lower rl.num_generations, rl.max_completion_length")
    assert "model.gradient_checkpointing" in message and "Tried to allocate 2.00 GiB" in message


@pytest.mark.parametrize("stage, knobs", [
    ("warmup", ["warmup.per_device_train_batch_size", "gradient_accumulation_steps", "model.max_seq_length"]),
    ("rl", ["rl.num_generations", "rl.prompts_per_step", "rl.max_completion_length", "rl.gradient_accumulation_steps"]),
])
def test_out_of_memory_in_a_stage_names_that_stages_knobs(tiny_model_dir, tmp_path, monkeypatch, stage, knobs):
    from transformers import Trainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(Trainer, "train", out_of_memory)
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.backend=hf", "model.lora_r=4",
                             "model.lora_alpha=8", "warmup.data.num_examples=8", "rl.data.num_examples=8",
                             "rl.num_generations=2", "rl.mode_balance=1.0", "rl.prompts_per_step=2", "threads=1",
                             f"output_dir={tmp_path}"])
    main = warmup.main if stage == "warmup" else rl.main
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="CUDA ran out of memory") as err:
        warnings.simplefilter("ignore")
        main(cfg)
    for knob in knobs + ["model.gradient_checkpointing"]:
        assert knob in str(err.value), knob
