"""Stage 1 (thinkless_lite.stages.warmup): QLoRA SFT on the tiny model, outputs, completion-only loss, resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from thinkless_lite.stages import warmup
from thinkless_lite.callbacks import COMPLETE_MARKER, last_complete_checkpoint, read_metrics
from thinkless_lite.config import ModelConfig, load_config
from thinkless_lite.data.hybrid import WarmupDataError, build_sft_examples, miniworld_responses
from thinkless_lite.tokens import SHORT, THINK, ControlTokens


def make_cfg(tiny_model_dir, tmp_path, *extra, max_steps=4, name="w"):
    return load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.backend=hf", "model.lora_r=4",
                              "model.lora_alpha=8", f"warmup.max_steps={max_steps}", "warmup.save_steps=2",
                              "warmup.data.num_examples=40", "warmup.per_device_train_batch_size=4",
                              f"output_dir={tmp_path}", f"name={name}", "threads=1", *extra])


@pytest.fixture
def captured_trainers(monkeypatch):
    """The PortableSFTTrainer instances warmup.main builds, kept for inspection."""
    from thinkless_lite import trainers

    built = []

    class Capturing(trainers.PortableSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(trainers, "PortableSFTTrainer", Capturing)
    return built


def run_main(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return warmup.main(cfg)


def test_warmup_trains_and_saves_adapter_with_tokenizer(tiny_model_dir, tmp_path, captured_trainers):
    cfg = make_cfg(tiny_model_dir, tmp_path)
    summary = run_main(cfg)
    stage = tmp_path / "w" / "warmup"
    adapter = stage / "adapter"
    assert summary["adapter"] == str(adapter) and summary["steps"] == 4 and summary["resumed_from"] is None
    assert summary["examples"] == 40 and summary["backend"] == "hf"
    assert torch.isfinite(torch.tensor(summary["train_loss"]))

    # adapter and the tokenizer that knows its control tokens, side by side
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "tokenizer.json"):
        assert (adapter / name).is_file(), name
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    from transformers import AutoTokenizer

    saved_tokenizer = AutoTokenizer.from_pretrained(adapter)
    for token in ControlTokens().all:
        assert len(saved_tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert saved_tokenizer.chat_template == captured_trainers[0].processing_class.chat_template  # neutralised
    sample = "<|im_start|>user\n3+4<|im_end|>\n<|im_start|>assistant\n<short>7<|im_end|>"
    assert saved_tokenizer(sample)["input_ids"] == captured_trainers[0].processing_class(sample)["input_ids"]

    # the run's records
    assert load_config(stage / "resolved.yaml") == cfg  # the exact config, reloadable
    metrics = read_metrics(stage / "metrics.jsonl")
    assert any("loss" in row for row in metrics) and metrics[-1]["step"] == 4
    assert "80 candidate responses; kept 40 (short: 20, think: 20)" in (stage / "data_report.txt").read_text()
    checkpoints = stage / "checkpoints"
    assert last_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-4")
    assert (checkpoints / "checkpoint-2" / COMPLETE_MARKER).exists()

    # completion-only loss: the collator masks every prompt token, and trains on the whole completion
    (trainer,) = captured_trainers
    assert trainer.args.completion_only_loss is True
    tokenizer = trainer.processing_class
    examples, _ = build_sft_examples(miniworld_responses(cfg.miniworld, 40), tokenizer, num_examples=40,
                                     short_share=0.5, seed=cfg.seed)
    encode = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    expected = {(encode(e["prompt"]), encode(e["completion"]) + (tokenizer.eos_token_id,)) for e in examples}
    control = {tokenizer.convert_tokens_to_ids(t) for t in ControlTokens().all[:2]}
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 4
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        real = mask.bool()
        ids, labels = ids[real], labels[real]  # padding is masked too
        assert (batch["labels"][~batch["attention_mask"].bool()] == -100).all()
        start = next(i for i, t in enumerate(ids.tolist()) if t in control)  # the completion's first token
        assert (tuple(ids[:start].tolist()), tuple(ids[start:].tolist())) in expected  # one example, whole
        assert (labels[:start] == -100).all()  # prompt: no loss
        assert torch.equal(labels[start:], ids[start:])  # control token, completion and EOS: loss

    # the saved adapter reloads into the same model (LoRA weights and the new control-token rows)
    from thinkless_lite.model import load_model

    trained = trainer.model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8,
                                          adapter_path=str(adapter)), trainable=False)
    ids = reloaded.tokenizer("<|im_start|>user\n3+4<|im_end|>\n<|im_start|>assistant\n<short>7",
                             return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        got = reloaded.model(input_ids=ids).logits
        with reloaded.model.disable_adapter():
            base = reloaded.model(input_ids=ids).logits
    # TRL trains QLoRA adapters in bf16 and PEFT reloads them in fp32: equal up to bf16 activations rounding
    assert (got - want).abs().max() < 2e-3
    assert (base - want).abs().max() > 20 * (got - want).abs().max()  # and the adapter did change the model


def test_warmup_resumes_from_the_last_complete_checkpoint(tiny_model_dir, tmp_path):
    first = run_main(make_cfg(tiny_model_dir, tmp_path, max_steps=2, name="r"))
    assert first["steps"] == 2 and first["resumed_from"] is None
    checkpoints = tmp_path / "r" / "warmup" / "checkpoints"
    assert (checkpoints / "checkpoint-2" / COMPLETE_MARKER).exists()
    # a save that was killed half way: newer, but without the marker
    torn = checkpoints / "checkpoint-3"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"half")

    second = run_main(make_cfg(tiny_model_dir, tmp_path, max_steps=4, name="r"))
    assert second["resumed_from"] == str(checkpoints / "checkpoint-2")
    assert second["steps"] == 4
    assert not torn.exists()  # ignored and removed
    state = json.loads((checkpoints / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (checkpoints / "checkpoint-4" / COMPLETE_MARKER).exists()
    steps = [row["step"] for row in read_metrics(tmp_path / "r" / "warmup" / "metrics.jsonl")]
    assert steps[0] == 1 and steps[-1] == 4  # both runs append to one log


def test_last_complete_checkpoint_ignores_and_removes_incomplete_ones(tmp_path):
    assert last_complete_checkpoint(tmp_path / "nothing-here") is None
    assert last_complete_checkpoint(tmp_path) is None
    for step, complete in [(2, True), (10, True), (12, False)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text(str(step))
    (tmp_path / "checkpoint-final").mkdir()  # not a step: left alone
    assert last_complete_checkpoint(tmp_path, remove_incomplete=False) == str(tmp_path / "checkpoint-10")
    assert (tmp_path / "checkpoint-12").exists()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # 10 > 2 numerically
    assert not (tmp_path / "checkpoint-12").exists()
    assert (tmp_path / "checkpoint-2").exists() and (tmp_path / "checkpoint-final").exists()


# ---------------------------------------------------------------- the stage's sources, wired from config

def test_stage_reads_a_paired_file(tiny_model_dir, tmp_path):
    path = tmp_path / "warmup.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "What is 2+3?", "output": "<think>\n2 plus 3 is 5.\n</think>\n\n\\boxed{5}"},
        {"instruction": "What is 2+3?", "output": "<short>\\boxed{5}"},
    ]) + "\n")
    cfg = make_cfg(tiny_model_dir, tmp_path, "warmup.data.source=paired", f"warmup.data.path={path}",
                   "warmup.data.question_column=instruction", "warmup.data.answer_column=null",
                   "warmup.data.response_column=output")
    responses = warmup.teacher_responses(cfg, tmp_path / "stage")
    assert [(r.mode, r.answer) for r in responses] == [(THINK, "\\boxed{5}"), (SHORT, "\\boxed{5}")]
    # the default answer_column ("answer") is not in this data: the error names the key and the columns
    cfg = make_cfg(tiny_model_dir, tmp_path, "warmup.data.source=paired", f"warmup.data.path={path}",
                   "warmup.data.question_column=instruction", "warmup.data.response_column=output")
    with pytest.raises(WarmupDataError, match=r"warmup\.data\.answer_column='answer'.*instruction, output"):
        warmup.teacher_responses(cfg, tmp_path / "stage")


def test_stage_generates_with_two_tiny_teachers(tiny_model_dir, tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(json.dumps({"question": q, "answer": a})
                              for q, a in [("1+2", "3"), ("3*4", "2"), ("9-5", 4), ("7+7", "4")]) + "\n")
    cfg = make_cfg(tiny_model_dir, tmp_path, "warmup.data.source=generate", f"warmup.data.path={path}",
                   f"warmup.data.reasoning_model={tiny_model_dir}", f"warmup.data.instruct_model={tiny_model_dir}",
                   "warmup.data.num_examples=3", "warmup.data.generation_batch_size=2",
                   "warmup.data.max_new_tokens_long=6", "warmup.data.max_new_tokens_short=4")
    stage = tmp_path / "stage"
    responses = warmup.teacher_responses(cfg, stage)
    lines = (stage / "teacher_responses.jsonl").read_text().splitlines()
    assert len(lines) == 6  # num_examples questions x two teachers
    assert sorted((r.question, r.mode, r.gold) for r in responses) == sorted(
        (q, m, g) for q, g in [("1+2", "3"), ("3*4", "2"), ("9-5", "4")] for m in (THINK, SHORT))
    # a rerun finds every answer on file and generates nothing
    before = Path(stage / "teacher_responses.jsonl").read_text()
    assert warmup.teacher_responses(cfg, stage) == responses
    assert (stage / "teacher_responses.jsonl").read_text() == before
