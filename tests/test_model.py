import warnings

import pytest
import torch

from thinkless_lite.config import ModelConfig
from thinkless_lite.model import (BackendChoice, ensure_control_tokens, load_model, select_backend,
                                  trainable_parameter_names, unsloth_status)
from thinkless_lite.tokens import ControlTokens


def test_auto_picks_unsloth_only_when_it_works():
    assert select_backend("auto", status=(True, "CUDA GPU and a working unsloth")).name == "unsloth"
    choice = select_backend("auto", status=(False, "no CUDA GPU (Unsloth needs one)"))
    assert choice == BackendChoice("hf", "fell back to hf: no CUDA GPU (Unsloth needs one)")
    assert select_backend("hf", status=(True, "")).name == "hf"
    assert select_backend("full", status=(True, "")).name == "full"


def test_explicit_unsloth_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="unsloth.*use model.backend=auto or hf"):
        select_backend("unsloth", status=(False, "no CUDA GPU (Unsloth needs one)"))
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend("tpu")


def test_broken_unsloth_never_crashes(monkeypatch):
    import builtins
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object() if name == "unsloth" else None)
    real_import = builtins.__import__

    def exploding_import(name, *args, **kwargs):
        if name == "unsloth":
            raise ImportError("libcuda.so not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", exploding_import)
    ok, why = unsloth_status()
    assert not ok and "failed to import" in why and "libcuda" in why
    assert select_backend("auto").name == "hf"


def test_control_tokens_added_when_missing_and_reused_when_present(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    think_id = tokenizer.convert_tokens_to_ids("<think>")
    size = len(tokenizer)
    new = ensure_control_tokens(tokenizer, ControlTokens())
    assert new == [size] and tokenizer.convert_tokens_to_ids("<think>") == think_id
    assert ensure_control_tokens(tokenizer, ControlTokens()) == []
    ids = tokenizer("<short>7", add_special_tokens=False)["input_ids"]
    assert ids[0] == new[0] and len(ids) == 2
    # TRL decodes completions with skip_special_tokens=True: the control tokens must survive it.
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<short>7"


@pytest.fixture(scope="module")
def qlora(tiny_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8))


def test_tiny_base_loads_in_4bit_with_lora_and_control_rows(qlora):
    import bitsandbytes as bnb

    assert qlora.backend.name == "hf"
    linear4 = [m for m in qlora.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7  # every projection of both layers is NF4
    assert linear4[0].weight.quant_type == "nf4"
    names = trainable_parameter_names(qlora.model)
    assert names and all("lora_" in n or "trainable_tokens_delta" in n for n in names)
    assert any("trainable_tokens_delta" in n for n in names)
    short_id = qlora.control_ids["short"]
    assert qlora.new_token_ids == [short_id]


def test_a_training_step_changes_only_adapter_and_new_token_rows(qlora):
    model, tokenizer = qlora.model, qlora.tokenizer
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    embed_before = model.get_input_embeddings().weight.detach().clone() if hasattr(
        model.get_input_embeddings(), "weight") else None
    batch = tokenizer(["<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n<short>3<|im_end|>"] * 2,
                      return_tensors="pt", add_special_tokens=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # LoRA B starts at zero: the second step moves A as well
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "nothing trained"
    assert all(("lora_" in n or "trainable_tokens_delta" in n) for n in changed), changed
    assert any("trainable_tokens_delta" in n for n in changed)
    # The merged embedding: only the <short> row differs from the frozen base.
    merged = model.get_input_embeddings().weight.detach()
    base = model.get_input_embeddings().original_module.weight.detach()
    differs = (merged != base).any(dim=1).nonzero().flatten().tolist()
    assert differs == [qlora.control_ids["short"]]
    # Tied head: TRL's fused path reads lm_head.weight/bias directly; both must see the trained row.
    head = model.get_output_embeddings()
    assert head.bias is None and torch.equal(head.weight.detach(), merged)
    del embed_before
