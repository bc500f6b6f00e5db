"""One 4-bit layout for training and inference on every CPU (bitsandbytes' AVX512-BF16 inference layout).

On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight for inference the first time a layer
runs in eval mode without grad: its training path then has no backward, and it computes in bf16, so an
inference-only load would answer differently from the model that was trained. Every test of the suite runs
as if the CPU had AVX512-BF16 (the autouse ``avx512bf16_cpu`` fixture: bitsandbytes reads the flag when a
layer is built), so these fail on every machine wherever ``plain_4bit_layout`` stops guarding a load.
"""

import warnings

import torch

from thinkless_lite.config import ModelConfig
from thinkless_lite.generation import SamplingSettings, generate
from thinkless_lite.compat import four_bit_layout, plain_4bit_layout
from thinkless_lite.model import load_model

PROMPT = "<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n<short>3<|im_end|>"


def linear4bit_layers(model):
    from bitsandbytes.nn import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def packed(layer) -> bool:
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


def load(tiny_model_dir, trainable=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8),
                            trainable=trainable, seed=0)
    torch.manual_seed(1)  # LoRA B starts at zero; non-zero B makes every layer's gradient depend on the others
    for name, param in loaded.model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.05)
    return loaded


def lora_gradients(loaded) -> dict[str, torch.Tensor]:
    model, tokenizer = loaded.model, loaded.tokenizer
    model.train()
    model.zero_grad(set_to_none=True)
    batch = tokenizer([PROMPT] * 2, return_tensors="pt", add_special_tokens=False)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def load_raw_4bit(tiny_model_dir):
    """The tiny model in 4 bits straight from transformers, without ``load_model``'s guard."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quantization,
                                                 device_map={"": "cpu"}, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_simulation_reaches_the_inference_layout(avx512bf16_cpu, tiny_model_dir):
    """Guard on the tests themselves: a 4-bit model built here takes bitsandbytes' repacking path unless we stop it."""
    model, tokenizer = load_raw_4bit(tiny_model_dir)
    layers = linear4bit_layers(model)
    assert layers and all(layer.support_avx512bf16_for_cpu for layer in layers)
    with torch.no_grad():
        model(**tokenizer(["1+2"], return_tensors="pt", add_special_tokens=False))
    assert all(packed(layer) for layer in layers), "bitsandbytes no longer repacks on eval: revisit the guard"
    assert four_bit_layout(model) == "packed"


def test_an_inference_only_load_computes_like_the_trainable_one(avx512bf16_cpu, tiny_model_dir, tmp_path):
    """The same adapter, loaded to train and loaded to answer, gives the same logits after an eval generation."""
    trained = load(tiny_model_dir)
    trained.model.save_pretrained(tmp_path / "adapter")
    trained.tokenizer.save_pretrained(tmp_path / "adapter")
    config = ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", adapter_path=str(tmp_path / "adapter"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answering = load_model(config, trainable=False, seed=0)
        training = load_model(config, trainable=True, seed=0)
    batch = answering.tokenizer([PROMPT, "1+2"], return_tensors="pt", add_special_tokens=False, padding=True)
    logits = []
    for loaded in (answering, training):
        generate(loaded.model, loaded.tokenizer, ["1+2", "7*3-1"], settings=SamplingSettings(max_new_tokens=4))
        assert four_bit_layout(loaded.model) == "plain"
        loaded.model.eval()
        with torch.no_grad():
            logits.append(loaded.model(**batch).logits)
    assert (logits[0] - logits[1]).abs().max().item() <= 1e-5


def test_a_trainable_model_never_takes_the_inference_layout(avx512bf16_cpu, tiny_model_dir):
    loaded = load(tiny_model_dir)
    layers = linear4bit_layers(loaded.model)
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    generate(loaded.model, loaded.tokenizer, ["1+2", "3*4"], settings=SamplingSettings(max_new_tokens=4))
    assert not any(packed(layer) for layer in layers)


def test_gradients_after_an_eval_generation_equal_those_of_a_model_that_never_generated(avx512bf16_cpu,
                                                                                         tiny_model_dir):
    fresh = lora_gradients(load(tiny_model_dir))
    generated = load(tiny_model_dir)
    generate(generated.model, generated.tokenizer, ["1+2", "7*3-1"], settings=SamplingSettings(max_new_tokens=4))
    after = lora_gradients(generated)
    assert fresh.keys() == after.keys() and any("lora_A" in n for n in fresh)
    for name in fresh:
        assert torch.allclose(fresh[name], after[name], atol=1e-6, rtol=1e-5), name
    assert any(g.abs().sum() > 0 for n, g in fresh.items() if "lora_A" in n)


def repacked(loaded):
    """A model whose layers were let into bitsandbytes' packed layout (built by hand, outside ``load_model``)
    and then run in eval mode, as a notebook that tries a model out does."""
    layers = linear4bit_layers(loaded.model)
    for layer in layers:
        layer.support_avx512bf16_for_cpu = True
    # bitsandbytes' own forward repacks; merged LoRA generation would compute the wrapped layers without it
    generate(loaded.model, loaded.tokenizer, ["1+2"], settings=SamplingSettings(max_new_tokens=3), merge_lora=False)
    assert layers and all(packed(layer) for layer in layers)
    assert four_bit_layout(loaded.model) == "packed"
    return loaded


def test_a_model_repacked_before_training_is_converted_back(avx512bf16_cpu, tiny_model_dir):
    """A notebook that tries the model out, then trains it: the trainers' first step undoes the repacking."""
    reference = lora_gradients(load(tiny_model_dir))
    loaded = repacked(load(tiny_model_dir, trainable=False))
    layers = linear4bit_layers(loaded.model)
    assert plain_4bit_layout(loaded.model) == len(layers)
    assert not any(packed(layer) or layer.support_avx512bf16_for_cpu for layer in layers)
    after = lora_gradients(loaded)
    assert after.keys() == reference.keys()
    for name in reference:  # the inverse re-quantises the double-quantised scales: close, not bit-equal
        error = (reference[name] - after[name]).norm() / reference[name].norm().clamp(min=1e-12)
        assert error < 1e-2, (name, error.item())


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


def test_both_trainers_guard_the_model_they_are_given(avx512bf16_cpu, tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from conftest import degrpo_args
    from thinkless_lite.trainers import PortableSFTTrainer
    from thinkless_lite.trainers import DeGRPOTrainer

    for make in ("sft", "grpo"):
        loaded = repacked(load(tiny_model_dir, trainable=False))
        layers = linear4bit_layers(loaded.model)
        common = dict(output_dir=str(tmp_path / make), use_cpu=True, report_to="none", max_steps=1)
        if make == "sft":
            PortableSFTTrainer(model=loaded.model, processing_class=loaded.tokenizer,
                               args=SFTConfig(**common, completion_only_loss=True),
                               train_dataset=Dataset.from_list([{"prompt": "1+2", "completion": "<short>3"}]))
        else:
            DeGRPOTrainer(model=loaded.model, processing_class=loaded.tokenizer, reward_funcs=[zero_reward],
                          args=degrpo_args(**common, per_device_train_batch_size=2, num_generations=2,
                                           max_completion_length=2, loss_type="dapo"),
                          train_dataset=Dataset.from_list([{"prompt": "1+2"}]))
        assert not any(packed(layer) or layer.support_avx512bf16_for_cpu for layer in layers), make


def test_the_optional_kernels_notice_does_not_greet_every_command(caplog):
    """bitsandbytes logs this at import on AVX512-BF16 CPUs; emitted here through its own logger on any CPU."""
    import logging

    import thinkless_lite  # noqa: F401  (installs the filter)

    bnb_log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bnb_log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", ModuleNotFoundError("No module named 'kernels'"))
    bnb_log.warning("some other bitsandbytes warning")
    shown = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert shown == ["some other bitsandbytes warning"]
