import warnings

import pytest
import torch

from thinkless_lite.config import ModelConfig
from thinkless_lite.model import BackendChoice, load_model, select_backend, unsloth_status
from thinkless_lite.tokens import ControlTokens
from thinkless_lite.vocabulary import ensure_control_tokens


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
        return load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8,
                                      train_control_rows="new"))


def test_tiny_base_loads_in_4bit_with_lora_and_control_rows(qlora):
    import bitsandbytes as bnb

    assert qlora.backend.name == "hf"
    linear4 = [m for m in qlora.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7  # every projection of both layers is NF4
    assert linear4[0].weight.quant_type == "nf4"
    names = [name for name, p in qlora.model.named_parameters() if p.requires_grad]
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


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory):
    """A tiny Qwen2 whose output head is its own matrix (R1-Distill-Qwen-1.5B and Qwen2.5-7B are built so)."""
    from thinkless_lite.mini_base import BaseTrainingConfig, build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-untied")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, BaseTrainingConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                                      num_attention_heads=4, num_key_value_heads=2))
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.02)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_new_rows_start_at_their_words_on_both_sides(untied_model_dir):
    """<think> starts as the mean of the rows of "think" (input and output side), a pad-like word alike."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkless_lite.vocabulary import grow_vocabulary

    model = AutoModelForCausalLM.from_pretrained(untied_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(untied_model_dir)
    old = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_tokens(["<short>", "<|x|>"])
    layers = (model.get_input_embeddings(), model.get_output_embeddings())
    expected = [[layer.weight[tokenizer(word, add_special_tokens=False)["input_ids"]].mean(0).clone()
                 for word in ("short", "x")] for layer in layers]
    assert grow_vocabulary(model, tokenizer) == 2 and grow_vocabulary(model, tokenizer) == 0
    layers = (model.get_input_embeddings(), model.get_output_embeddings())  # resizing made new modules
    for layer, rows in zip(layers, expected):
        assert torch.allclose(layer.weight[old:], torch.stack(rows))
    assert not torch.allclose(layers[0].weight[old], layers[0].weight[old + 1])  # distinct starts


def test_an_untied_head_trains_its_control_rows_too(untied_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(untied_model_dir), backend="hf", lora_r=4, lora_alpha=8,
                                        train_control_rows="new"))
    indices = loaded.model.peft_config["default"].trainable_token_indices
    assert indices == {"embed_tokens": [loaded.control_ids["short"]], "lm_head": [loaded.control_ids["short"]]}
    names = [name for name, p in loaded.model.named_parameters() if p.requires_grad]
    assert any("lm_head" in n and "trainable_tokens_delta" in n for n in names)


def test_adapters_hold_lora_and_control_rows_only_and_load_onto_a_fresh_base(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    from thinkless_lite.model import save_adapter

    config = ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = load_model(config)
        with torch.no_grad():
            for param in trained.model.parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param) * 0.05)
        folder = save_adapter(trained, tmp_path / "adapter")
        with safe_open(folder / "adapter_model.safetensors", "pt") as f:
            keys = list(f.keys())
        assert keys and all("lora_" in k or "trainable_tokens" in k for k in keys), keys
        size = sum(f.stat().st_size for f in folder.iterdir())
        reloaded = load_model(ModelConfig(**{**config.__dict__, "adapter_path": str(folder)}), trainable=False)
    batch = trained.tokenizer(["<short>1+2=3"], return_tensors="pt", add_special_tokens=False)
    trained.model.eval()
    with torch.no_grad():
        assert torch.allclose(trained.model(**batch).logits, reloaded.model(**batch).logits, atol=1e-5)
    lora = sum(p.numel() * 4 for p in trained.model.parameters() if p.requires_grad)
    assert size < lora + 200_000, (size, lora)  # weights, tokenizer and configs: no embedding tables


def test_a_trainable_adapter_load_gets_kbit_preparation_and_checkpointing(tiny_model_dir, tmp_path):
    from thinkless_lite.model import save_adapter

    config = ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = save_adapter(load_model(config), tmp_path / "adapter")
        loaded = load_model(ModelConfig(**{**config.__dict__, "adapter_path": str(folder),
                                           "gradient_checkpointing": True}))
    base = loaded.model.get_base_model()
    assert base.is_gradient_checkpointing
    assert getattr(base, "is_loaded_in_4bit", False)


def fake_unsloth(monkeypatch, calls):
    """An ``unsloth`` module whose FastLanguageModel records what load_model asks of it (the real one needs CUDA)."""
    import sys
    import types

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import thinkless_lite.model as model_module

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(model_name, max_seq_length, load_in_4bit, dtype):
            calls.append(("from_pretrained", model_name))
            return AutoModelForCausalLM.from_pretrained(model_name), None

        @staticmethod
        def get_peft_model(model, r, lora_alpha, lora_dropout, target_modules, random_state, use_gradient_checkpointing,
                           trainable_token_indices=None):
            calls.append(("get_peft_model", use_gradient_checkpointing, trainable_token_indices))
            return get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules,
                                                    trainable_token_indices=trainable_token_indices))

        @staticmethod
        def patch_peft_model(model, use_gradient_checkpointing):
            calls.append(("patch_peft_model", use_gradient_checkpointing))
            return model

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    monkeypatch.setattr(model_module, "unsloth_status", lambda: (True, "CUDA GPU and a working unsloth"))


def test_unsloth_patches_an_adapter_loaded_from_a_folder(tiny_model_dir, tmp_path, monkeypatch):
    """RL from the warm-up adapter: Unsloth's LoRA kernels and checkpointing, as for a new adapter."""
    from thinkless_lite.model import save_adapter

    calls = []
    fake_unsloth(monkeypatch, calls)
    config = ModelConfig(name_or_path=str(tiny_model_dir), backend="unsloth", lora_r=4, lora_alpha=8,
                         gradient_checkpointing=True, train_control_rows="new")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = load_model(config)
        assert calls[-1][:2] == ("get_peft_model", "unsloth") and calls[-1][2] == {"embed_tokens": [fresh.control_ids["short"]]}
        folder = save_adapter(fresh, tmp_path / "adapter")
        calls.clear()
        load_model(ModelConfig(**{**config.__dict__, "adapter_path": str(folder)}))
    assert [c[0] for c in calls] == ["from_pretrained", "patch_peft_model"] and calls[1][1] == "unsloth"


def test_one_end_id_helper_for_a_loaded_model_and_a_base_read_from_disk(mini_base_dir):
    """The generation path (a model's config) and the base path (config on disk) give the same ids, EOS first."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkless_lite.base import MINI_BASE_NAME, base_generation_config
    from thinkless_lite.vocabulary import end_token_ids

    tokenizer = AutoTokenizer.from_pretrained(mini_base_dir)
    model = AutoModelForCausalLM.from_pretrained(mini_base_dir)
    from_model = end_token_ids(tokenizer, model.generation_config)
    assert from_model == end_token_ids(tokenizer, base_generation_config(MINI_BASE_NAME)) == [tokenizer.eos_token_id]
    assert end_token_ids(tokenizer, SimpleNamespace(eos_token_id=[7, tokenizer.eos_token_id, 7])) == [
        tokenizer.eos_token_id, 7]
    assert end_token_ids(SimpleNamespace(eos_token_id=None), SimpleNamespace(eos_token_id=5)) == [5]
    assert end_token_ids(tokenizer, None) == [tokenizer.eos_token_id]
    assert base_generation_config("no/such-model") is None
