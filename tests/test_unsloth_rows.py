"""The control rows train under Unsloth: proven on CPU with unsloth_zoo's own preparation code.

Unsloth's ``FastLanguageModel.get_peft_model`` and ``patch_peft_model`` end with
``prepare_model_for_kbit_training`` = unsloth_zoo ``training_utils.prepare_model_for_training(full_finetuning=
False)``, which freezes every parameter that is not a LoRA weight or a PEFT bias. PEFT's control rows
(``trainable_tokens_delta``) are neither. ``import unsloth`` needs CUDA, so ``unsloth`` is replaced here by a
stand-in whose ``get_peft_model`` / ``patch_peft_model`` do what Unsloth's do to a model's trainable set: PEFT,
then unsloth_zoo's ``prepare_model_for_training`` with Unsloth's arguments, executed from the pinned wheel's
own source (read, never imported: ``make dev`` installs it with --no-deps). ``thinkless_lite.model.load_model``
runs its real Unsloth branch on top of that. The premise (which calls Unsloth makes) is read from the wheel too.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import types
import typing
import warnings
from pathlib import Path

import pytest
import torch

from conftest import installed_file
from thinkless_lite import model as model_module
from thinkless_lite.config import ModelConfig
from thinkless_lite.control_rows import assert_control_rows_trainable, frozen_adapter_tensors, unfreeze_control_rows
from thinkless_lite.model import load_model, save_adapter

ROWS = "trainable_tokens_delta"




def _defs(path: Path, names: set[str] | None = None) -> list[ast.stmt]:
    """Top-level functions, classes and assignments of a wheel's module (imports left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    keep = (ast.FunctionDef, ast.ClassDef, ast.Assign)
    out = []
    for node in tree.body:
        if not isinstance(node, keep):
            continue
        targets = [node.name] if not isinstance(node, ast.Assign) else [getattr(t, "id", "") for t in node.targets]
        if names is None or set(targets) & names:
            out.append(node)
    return out


def _zoo_preparation_defs(path: Path) -> list[ast.stmt]:
    """training_utils.py from its bf16-autocast helpers through ``prepare_model_for_training``: the function
    and everything it calls in that module (the trainer loop below it needs more than torch)."""
    nodes = _defs(path)
    names = [getattr(n, "name", None) or getattr(n.targets[0], "id", "") for n in nodes]
    return nodes[names.index("_BF16_AUTOCAST_SUBCLASSES"):names.index("prepare_model_for_training") + 1]


@pytest.fixture(scope="module")
def zoo_prepare():
    """unsloth_zoo's ``prepare_model_for_training`` and Unsloth's ``prepare_model_for_kbit_training`` wrapper,
    executed from the pinned wheels' source. Only the gradient-checkpointing *un*patchers (CUDA-side, no
    effect on which parameters train) are stand-ins."""
    import os

    namespace = {"torch": torch, "os": os, "re": re, "sys": sys, "functools": __import__("functools"),
                 "math": __import__("math"), "time": __import__("time"),
                 "unpatch_unsloth_gradient_checkpointing": lambda: None,
                 "unpatch_unsloth_smart_gradient_checkpointing": lambda: None,
                 "HAS_TORCH_DTYPE": False, **{n: getattr(typing, n) for n in ("Any", "Optional", "List", "Dict", "Tuple")}}
    nodes = (_defs(installed_file("unsloth_zoo", "utils.py"), {"__DTYPE_MAP", "_get_dtype"})
             + _defs(installed_file("unsloth_zoo", "hf_utils.py"), {"dtype_from_config"})
             + _zoo_preparation_defs(installed_file("unsloth_zoo", "training_utils.py")))
    assert {"_get_dtype", "dtype_from_config", "prepare_model_for_training", "disable_use_cache"} <= {
        getattr(n, "name", None) for n in nodes}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "unsloth_zoo", "exec"), namespace)  # noqa: S102
    kbit = _defs(installed_file("unsloth", "models/_utils.py"), {"prepare_model_for_kbit_training"})
    assert len(kbit) == 1
    exec(compile(ast.Module(body=kbit, type_ignores=[]), "unsloth/models/_utils.py", "exec"), namespace)  # noqa: S102
    return namespace["prepare_model_for_kbit_training"]


@pytest.fixture
def unsloth_stand_in(monkeypatch, zoo_prepare):
    """``unsloth.FastLanguageModel`` as far as the trainable set goes; load_model believes Unsloth is usable."""
    from peft import LoraConfig, get_peft_model

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(model_name, max_seq_length=None, load_in_4bit=False, dtype=None, **kwargs):
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype), None

        @staticmethod
        def patch_peft_model(model, use_gradient_checkpointing="unsloth"):  # unsloth/models/llama.py
            return zoo_prepare(model, use_gradient_checkpointing=use_gradient_checkpointing, use_reentrant=True)

        @staticmethod
        def get_peft_model(model, r=16, target_modules=(), lora_alpha=16, lora_dropout=0.0, bias="none",
                           use_gradient_checkpointing="unsloth", random_state=3407, **kwargs):
            torch.manual_seed(random_state)
            config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias=bias,
                                target_modules=list(target_modules), task_type="CAUSAL_LM", **kwargs)
            return FastLanguageModel.patch_peft_model(get_peft_model(model, config), use_gradient_checkpointing)

    module = types.ModuleType("unsloth")
    module.FastLanguageModel = FastLanguageModel
    monkeypatch.setitem(sys.modules, "unsloth", module)
    monkeypatch.setattr(model_module, "unsloth_status", lambda: (True, "CPU stand-in for Unsloth (test)"))
    monkeypatch.setenv("UNSLOTH_MIXED_PRECISION", "")  # the zoo code sets it; keep the test process clean
    return FastLanguageModel


@pytest.fixture(scope="module")
def untied_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Qwen2 with a separate output head (as DeepSeek-R1-Distill-Qwen-1.5B has)."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-untied")
    for item in tiny_model_dir.iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, folder / item.name)
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 1.5)
    model.save_pretrained(folder)
    return folder


def _cfg(folder, backend="unsloth", **overrides) -> ModelConfig:
    settings = dict(name_or_path=str(folder), backend=backend, lora_r=4, lora_alpha=8, dtype="float32",
                    train_control_rows="all", gradient_checkpointing=False)
    return ModelConfig(**{**settings, **overrides})


def _load(cfg, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(cfg, **kwargs)


def _row_tensors(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ROWS in n and n.endswith(".default")}


def test_unsloth_prepares_every_peft_model_by_freezing_non_lora_tensors():
    """The premise, read from the pinned wheels: both Unsloth paths of load_model end in the zoo preparation
    with full_finetuning=False, which trains only names with LoRA marks (or PEFT biases)."""
    llama = installed_file("unsloth", "models/llama.py").read_text(encoding="utf-8")
    assert "model = FastLlamaModel.patch_peft_model(model, use_gradient_checkpointing)" in llama  # get_peft_model
    patch = llama[llama.index("def patch_peft_model("):]
    assert re.search(r"model = prepare_model_for_kbit_training\(\s*model,", patch[:4000])
    kbit = installed_file("unsloth", "models/_utils.py").read_text(encoding="utf-8")
    assert re.search(r"def prepare_model_for_kbit_training\(.*?return prepare_model_for_training\(.*?"
                     r"full_finetuning = False", kbit, re.S)
    zoo = installed_file("unsloth_zoo", "training_utils.py").read_text(encoding="utf-8")
    assert '".lora_A." in name' in zoo and ROWS not in zoo


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_zoo_preparation_freezes_the_control_rows_and_unfreeze_restores_them(zoo_prepare, tiny_model_dir,
                                                                            untied_model_dir, untied):
    """What Unsloth does to a PEFT model with trainable tokens, step by step (hf load, then the zoo code)."""
    folder = untied_model_dir if untied else tiny_model_dir
    loaded = _load(_cfg(folder, backend="hf"))
    model = loaded.model
    rows = _row_tensors(model)
    assert len(rows) == (2 if untied else 1) and all(p.requires_grad for p in rows.values())
    zoo_prepare(model, use_gradient_checkpointing=False, use_reentrant=True)
    assert not any(p.requires_grad for p in rows.values()), "unsloth_zoo no longer freezes the rows: re-check"
    assert any(p.requires_grad for n, p in model.named_parameters() if ".lora_A." in n)
    with pytest.raises(RuntimeError, match=ROWS):
        assert_control_rows_trainable(model)
    assert sorted(unfreeze_control_rows(model)) == sorted(rows)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in rows.values())
    assert_control_rows_trainable(model)


def _step_changes_rows(loaded) -> dict[str, float]:
    """One AdamW step on a loss through the control tokens; how far each row tensor moved."""
    model = loaded.model
    ids = list(loaded.control_ids.values())
    text = loaded.tokenizer("12+30=", add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([text + [ids[0]] + text + [ids[1]] + text])
    rows = _row_tensors(model)
    before = {n: p.detach().clone() for n, p in rows.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    return {n: float((p.detach() - before[n]).abs().max()) for n, p in rows.items()}


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_control_rows_train_through_load_models_unsloth_branch(unsloth_stand_in, tiny_model_dir, untied_model_dir,
                                                               tmp_path, untied):
    """load_model(backend=unsloth), new adapter and from an adapter folder: rows trainable, fp32, and moved by a step."""
    folder = untied_model_dir if untied else tiny_model_dir
    loaded = _load(_cfg(folder), seed=0)
    assert loaded.backend.name == "unsloth"
    rows = _row_tensors(loaded.model)
    assert len(rows) == (2 if untied else 1), list(rows)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in rows.values())
    assert frozen_adapter_tensors(loaded.model) == []
    moved = _step_changes_rows(loaded)
    assert all(v > 0 for v in moved.values()), moved

    adapter = save_adapter(loaded, tmp_path / "adapter")
    again = _load(_cfg(folder, adapter_path=str(adapter)), seed=0)  # FastLanguageModel.patch_peft_model path
    rows = _row_tensors(again.model)
    assert len(rows) == (2 if untied else 1) and all(p.requires_grad for p in rows.values())
    assert_control_rows_trainable(again.model)
    moved = _step_changes_rows(again)
    assert all(v > 0 for v in moved.values()), moved

    frozen = _load(_cfg(folder, adapter_path=str(adapter)), trainable=False)  # inference: nothing re-enabled
    assert not any(p.requires_grad for p in _row_tensors(frozen.model).values())
    assert frozen_adapter_tensors(frozen.model) == []


def test_bf16_rows_come_back_in_float32_like_the_lora_weights(unsloth_stand_in, untied_model_dir):
    """On a bf16 GPU the zoo code upcasts the LoRA weights to fp32 (mixed precision); the rows must match,
    or Adam's small steps would vanish in a bf16 row."""
    loaded = _load(_cfg(untied_model_dir, dtype="bfloat16"))
    trainable = {n: p.dtype for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert any(ROWS in n for n in trainable) and set(trainable.values()) == {torch.float32}


def test_guard_names_each_frozen_tensor_and_ignores_the_reference_adapter(tiny_model_dir):
    from thinkless_lite.compat import ensure_reference_adapter

    loaded = _load(_cfg(tiny_model_dir, backend="hf"))
    model = loaded.model
    assert_control_rows_trainable(model)
    assert ensure_reference_adapter(model)  # a frozen "ref" copy: not trained, not a problem
    assert_control_rows_trainable(model)
    params = dict(model.named_parameters())
    row = next(n for n in _row_tensors(model))
    lora = next(n for n in params if ".lora_B.default." in n)
    params[row].requires_grad_(False)
    params[lora].requires_grad_(False)
    with pytest.raises(RuntimeError) as err:
        assert_control_rows_trainable(model)
    assert row in str(err.value) and lora in str(err.value) and "2 tensor(s)" in str(err.value)
    # A model without adapters (or not PEFT at all) has nothing to check.
    assert frozen_adapter_tensors(torch.nn.Linear(2, 2)) == []
