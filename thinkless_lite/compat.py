"""Where the pinned libraries need a hand, in one place, each with the reason.

* TRL 1.15 computes log-probabilities through a fused, chunked LM head whose kernels are Triton (GPU
  only). On a CPU that path raises, so SFT and GRPO would not run at all: ``plain_logps_and_entropies``
  gives the same numbers from a plain forward there, and TRL's path stays untouched everywhere else.
* TRL casts QLoRA adapter weights to bf16 (the QLoRA paper's advice for bf16 GPUs). Where bf16 is not
  native (CPU, T4) every adapter matmul is then emulated: 3.4x slower steps measured on CPU. There the
  trainable weights go back to fp32 (``restore_adapter_precision``).
* bitsandbytes 0.50 repacks 4-bit weights for CPU inference on AVX512-BF16 CPUs: that layout has no
  backward and computes in bf16, so the same adapter would answer differently there. Every model keeps
  the one plain layout (``plain_4bit_layout``).
* ``import unsloth`` rewrites TRL's GRPOTrainer; its loss re-lays a batch and drops TRL's KL reference
  (``trainer_flavour``, ``unsloth_layout``, ``ensure_reference_adapter``).

Nothing here imports TRL at module level: ``import unsloth`` must come before TRL, and the model loader
imports this module before it knows whether Unsloth will be used.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import torch

log = logging.getLogger("thinkless_lite")


def bf16_native() -> bool:
    """bf16 in hardware (Ampere+). A T4 reports bf16 support through emulation, which is slow."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def fused_logprobs_available() -> bool:
    """Whether TRL's Triton log-prob kernels imported and a GPU is there to run them."""
    from trl.trainer import utils as trl_utils

    return getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None and torch.cuda.is_available()


def prepare_for_training(model) -> None:
    """What every trainer does to its model first: trainable 4-bit layout, adapter precision."""
    plain_4bit_layout(model)
    restore_adapter_precision(model)


def restore_adapter_precision(model) -> None:
    """Undo TRL's bf16 cast of trainable weights where bf16 is not native (see module docstring)."""
    if bf16_native():
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()


PLAIN_4BIT_LAYOUT = "plain"  # what reports say ran: bitsandbytes' one layout for training and inference


def plain_4bit_layout(model) -> int:
    """Keep every bitsandbytes 4-bit weight in its plain layout, for training and inference alike.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight into a packed inference
    layout the first time the layer runs in eval mode without grad, and never converts it back. That
    layout (a) has no backward: a crash on layers with a bias, silently wrong LoRA gradients on layers
    without one, and RL generates in eval mode before every update; and (b) computes in bf16, so an
    inference-only load answers with logits that differ from the trained model's by up to ~0.5 on
    SmolLM2 in 4 bits (greedy answers and P(think) can flip) and from the same adapter on any other CPU.
    What it buys is generation speed on those CPUs only: +19% tokens/s on the mini base, +26% on
    SmolLM2 (``benchmarks/cpu_speed.py``, 2 threads). One layout everywhere is worth more than that, so the
    repacking is switched off on every model this package loads, and layers that were already repacked
    (a model built by hand and tried out) are converted back. Returns how many layers had to be.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # no bitsandbytes, no 4-bit layers
        return 0
    converted = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            converted += 1
    if converted:
        log.warning("%d 4-bit layers had been repacked for CPU inference (bitsandbytes' AVX512-BF16 layout); "
                    "converted them back to the plain layout that training and evaluation share", converted)
    return converted


def four_bit_layout(model) -> str | None:
    """Which 4-bit layout this model computes in, for reports and logs: ``"plain"``, ``"packed"`` (a model
    someone repacked by hand), or None when it has no bitsandbytes 4-bit layers."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return None
    if not isinstance(model, torch.nn.Module):  # a stand-in model (tests, remote engines): nothing to tell
        return None
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    if not layers:
        return None
    repacks = any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                  or getattr(m, "support_avx512bf16_for_cpu", False) for m in layers)
    return "packed" if repacks else PLAIN_4BIT_LAYOUT


@contextlib.contextmanager
def instance_attribute(owner, name: str, value):
    """``owner.<name>`` set on the instance for the block, then what the instance had put back (nothing: the
    class's attribute shows again). For wrapping a model's ``generate`` or ``forward`` around one call, where
    another wrapper (ours, or Unsloth's) may already sit on the instance."""
    own = owner.__dict__.get(name)
    setattr(owner, name, value)
    try:
        yield owner
    finally:
        if own is None:
            owner.__dict__.pop(name, None)
        else:
            setattr(owner, name, own)


@contextlib.contextmanager
def _forwards_replaced(layers, make_forward):
    """Each layer's forward replaced by ``make_forward(layer)`` for the block, the class's own back after it (the
    copies a replacement made go with its closure)."""
    for layer in layers:
        layer.forward = make_forward(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextlib.contextmanager
def dequantized_4bit_weights(model):
    """Inference with each bitsandbytes 4-bit weight dequantized once, not on every forward; CPU only.

    On a CPU, bitsandbytes computes a 4-bit layer by dequantizing its whole weight and then a plain matmul,
    on every call: in ``generate`` that is every layer at every generated token, although the base is frozen.
    Here each weight is dequantized on its first call in the block, with bitsandbytes' own function and
    compute dtype, and reused until the block ends: the same matmul on the same numbers, so the same tokens.
    Costs a full-precision copy of the base for the duration (on a GPU, where memory is what 4 bits are for and
    bitsandbytes' kernels do not dequantize a whole weight per call, nothing changes). A model in training
    mode, or one without 4-bit layers, is left as it is.
    """
    try:
        from bitsandbytes.functional import dequantize_4bit
        from bitsandbytes.nn import Linear4bit
        from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module
    except ImportError:
        yield model
        return
    layers = [m for m in model.modules() if isinstance(m, Linear4bit) and m.weight.device.type == "cpu"
              and "forward" not in m.__dict__]  # a forward hooked in place (accelerate's offload) stays as it is
    if getattr(model, "training", False) or not layers:
        yield model
        return

    def cached_forward(layer):
        weights: dict[torch.dtype, torch.Tensor] = {}

        def forward(x):
            fix_4bit_weight_quant_state_from_module(layer)
            if getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
                return type(layer).forward(layer, x)  # repacked by hand: bitsandbytes' own path
            if not layer.compute_type_is_set:  # as Linear4bit.forward: the first input sets the compute dtype
                layer.set_compute_type(x)
                layer.compute_type_is_set = True
            dtype = layer.compute_dtype or x.dtype
            if dtype not in weights:
                weights[dtype] = dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(dtype)
            bias = None if layer.bias is None else layer.bias.to(x.dtype).to(dtype)
            return torch.nn.functional.linear(x.to(dtype), weights[dtype], bias).to(x.dtype)

        return forward

    with _forwards_replaced(layers, cached_forward):
        yield model


@contextlib.contextmanager
def merged_lora_weights(model, *, four_bit: bool = True):
    """Inference with each LoRA layer computed as one matmul on its base weight plus the adapters' deltas.

    Unmerged, a LoRA layer costs the base matmul plus two thin ones and an add, at every generated token: on
    SmolLM2-135M decoding 16 rows, 207-213 ms a step against 87-98 ms with ``merge_and_unload`` (issue 34, wall
    time, 2 threads); with this, 231 against 197 CPU ms at 1 thread (``benchmarks/decode_step.py``). Each PEFT LoRA
    ``Linear`` computes ``F.linear(x, W + sum of get_delta_weight(a) over the active adapters)`` (PEFT's own
    merge arithmetic), the sum made under no_grad on the layer's first call in the block and kept until the block
    ends. ``W`` is a copy: the base and the trained LoRA weights are never written, so training sees exactly what
    it would have. The same matmul up to float rounding (the delta is added to the weight, not to the output).

    A 4-bit base is dequantized into that copy on a CPU only (``four_bit``; the same dequantization as
    :func:`dequantized_4bit_weights`): on a GPU the merged copy would cost the memory 4 bits save. Left as they
    are: a model in training mode, Unsloth's models (their own fast path), DoRA and other LoRA variants, calls
    with ``adapter_names`` or other extra arguments, disabled or already merged adapters, and layers whose forward
    is hooked in place (accelerate's offload). Enter it before :func:`dequantized_4bit_weights`, which hooks the
    4-bit layers in place.
    """
    peft_loaded = "peft" in sys.modules  # no PEFT imported, no LoRA layers (and no import before Unsloth's)
    layers = [m for m in model.modules() if _mergeable_lora_layer(m, four_bit)] \
        if peft_loaded and isinstance(model, torch.nn.Module) else []
    if getattr(model, "training", False) or not layers or unsloth_patched(model):
        yield model
        return
    with _forwards_replaced(layers, _merged_forward):
        yield model


def unsloth_patched(model) -> bool:
    """Whether Unsloth loaded this model: it marks every module for its patched forwards (``_unsloth_fast_path``)."""
    return any(getattr(m, "_unsloth_fast_path", False) for m in model.modules())


def _is_4bit(layer) -> bool:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return False
    return isinstance(layer, Linear4bit)


def _mergeable_lora_layer(module, four_bit: bool) -> bool:
    """A PEFT LoRA wrapper of a plain ``nn.Linear``, or of a plain-layout 4-bit one on a CPU, nothing hooked."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer) or not hasattr(module, "get_delta_weight") or "forward" in vars(module):
        return False
    if getattr(module, "lora_variant", None) or any(getattr(module, "use_dora", {}).values()):
        return False  # DoRA and other variants: their forward is not a plain delta on the weight
    base = module.get_base_layer()
    if "forward" in vars(base) or getattr(module, "fan_in_fan_out", False):
        return False
    if _is_4bit(base):
        return (four_bit and base.weight.device.type == "cpu"
                and not getattr(base.weight.quant_state, "packing_format_for_cpu", False))
    return type(base) is torch.nn.Linear


def _merged_forward(layer):
    """``layer``'s forward on its merged weight, computed once per (active adapters, dtype); PEFT's otherwise."""
    base = layer.get_base_layer()
    four_bit = _is_4bit(base)
    weights: dict[tuple, torch.Tensor] = {}

    def forward(x, *args, **kwargs):
        active = tuple(a for a in layer.active_adapters if a in layer.lora_A)
        if (args or kwargs or layer.training or layer.disable_adapters or layer.merged or not active
                or any(a in layer.lora_variant for a in active)):
            return type(layer).forward(layer, x, *args, **kwargs)
        if four_bit:
            from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

            fix_4bit_weight_quant_state_from_module(base)
            if not base.compute_type_is_set:  # as Linear4bit.forward: the first input sets the compute dtype
                base.set_compute_type(x)
                base.compute_type_is_set = True
            dtype = base.compute_dtype or x.dtype
        else:
            dtype = base.weight.dtype
        key = (active, dtype)
        if key not in weights:
            weights.clear()  # one merged copy per layer at a time
            weights[key] = _merged_weight(layer, base, active, dtype)
        if not four_bit:  # nn.Linear's own call, on the merged weight
            return torch.nn.functional.linear(x, weights[key], base.bias)
        bias = None if base.bias is None else base.bias.to(dtype)
        return torch.nn.functional.linear(x.to(dtype), weights[key], bias).to(x.dtype)

    return forward


@torch.no_grad()
def _merged_weight(layer, base, adapters: tuple[str, ...], dtype: torch.dtype) -> torch.Tensor:
    """A new tensor: the base weight (dequantized if 4-bit) plus each adapter's delta, as PEFT's ``merge`` adds it."""
    if _is_4bit(base):
        from bitsandbytes.functional import dequantize_4bit

        merged = dequantize_4bit(base.weight.data, base.weight.quant_state).to(dtype)
    else:
        merged = base.weight.detach().to(dtype, copy=True)
    for adapter in adapters:
        merged += layer.get_delta_weight(adapter).to(dtype)
    return merged


def plain_logps_and_entropies(trainer, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                              compute_entropy=False, compute_aux_loss=False):
    """GRPO's per-token log-probs (at the sampling temperature) and entropies from a plain forward."""
    from trl.trainer import utils as trl_utils

    batch_size = batch_size or input_ids.size(0)
    all_logps, all_entropies, all_aux = [], [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
        extra = {"output_router_logits": True} if compute_aux_loss else {}
        with trainer.accelerator.autocast():
            outputs = model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1, **extra)
        logits = outputs.logits[:, :-1, :].float() / trainer.temperature
        all_logps.append(trl_utils.selective_log_softmax(logits, ids[:, -logits_to_keep:]))
        if compute_entropy:
            all_entropies.append(trl_utils.entropy_from_logits(logits))
        if compute_aux_loss:
            all_aux.append(outputs.aux_loss)
    logps = torch.cat(all_logps)
    entropies = torch.cat(all_entropies) if compute_entropy else None
    return logps, entropies, (torch.stack(all_aux).mean() if compute_aux_loss else None)


# ---------------------------------------------------------------- Unsloth's patched GRPOTrainer

def trainer_flavour(trainer_class: type) -> str:
    """``"unsloth"`` when ``import unsloth`` rewrote the GRPOTrainer this class inherits from, else ``"trl"``.

    Unsloth replaces ``trl.GRPOTrainer`` by a rewritten copy named ``UnslothGRPOTrainer``, so which one a
    subclass got depends on whether ``unsloth`` was imported before the subclass was defined.
    """
    return "unsloth" if any(c.__name__.startswith("Unsloth") for c in trainer_class.__mro__) else "trl"


def unsloth_layout(per_token: torch.Tensor, prompt_ids: torch.Tensor, completion_ids: torch.Tensor,
                   pad_token_id: int, width: int | None = None) -> torch.Tensor:
    """Move ``(B, T)`` per-token values (TRL's completion columns) to where Unsloth's text loss reads them.

    unsloth_zoo's ``grpo_accumulated_loss`` moves every pad token of a row to its end (``left_pack_padding``,
    a stable sort on ``ids != pad``), keeps the last ``T + max_left_pad`` columns and rebuilds the
    completion mask there. Its loss broadcasts a ``(B,)`` advantage but takes a ``(B, T)`` one as is, so
    DeGRPO's per-token advantages must make the same move: the same permutation is applied to them here.
    ``max_left_pad`` is the one that function uses: ``width - T`` when old or reference log-probs fix the
    width, else the most pad tokens any prompt of this micro-batch has.
    """
    batch, length = per_token.shape
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    pads = (prompt_ids == pad_token_id).sum(dim=1)  # zoo's calculate_pad_tokens_in_prompt
    max_left_pad = int(pads.max()) if width is None else width - length
    if max_left_pad < int(pads.max()):
        raise ValueError(f"Unsloth's loss window of {width} columns is too narrow for prompts with "
                         f"{int(pads.max())} pad tokens")
    values = torch.cat([per_token.new_zeros(prompt_ids.shape), per_token], dim=1)
    order = torch.argsort((ids != pad_token_id).to(torch.int8), dim=1, descending=True, stable=True)
    return values.gather(1, order.to(values.device))[:, -(length + max_left_pad):]


def unsloth_loss_inputs(inputs: dict, pad_token_id: int) -> dict:
    """The micro-batch ``inputs`` with DeGRPO's per-token advantages in Unsloth's loss layout.

    Unsloth's mask keeps ``ids != pad``; DeGRPO's weights are zero on pad tokens too (see
    ``DeGRPOMixin._generate_and_score_completions``), so both losses cover the same tokens.
    """
    advantages = inputs["advantages"]
    if advantages.dim() == 1:
        return inputs
    fixed = next((inputs[k] for k in ("old_per_token_logps", "ref_per_token_logps") if inputs.get(k) is not None), None)
    relaid = unsloth_layout(advantages, inputs["prompt_ids"], inputs["completion_ids"], pad_token_id,
                            None if fixed is None else fixed.shape[1])
    return {**inputs, "advantages": relaid}


def ensure_reference_adapter(model) -> bool:
    """Make the PEFT adapter named ``ref`` an exact, frozen copy of ``default``: the KL reference.

    Our KL reference is the policy RL starts from (the warm-up adapter, control rows included), as in
    the paper, where the reference is the warm-up model. Stock TRL copies the LoRA weights into ``ref``
    but not the trainable control-token rows (their parameter names end in ``.default``, not
    ``.default.``), which would leave the reference with the base's untrained control rows; Unsloth's
    trainer drops TRL's ``ref`` block altogether, which would make the reference the adapter-free base,
    a model that never learned to choose. Both then pull the control token towards "never choose".
    Returns False for a model without PEFT adapters.
    """
    if not hasattr(model, "peft_config") or "default" not in model.peft_config:
        return False
    if "ref" not in model.peft_config:
        model.add_adapter("ref", model.peft_config["default"])
        model.set_adapter("default")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            head, dot, tail = name.rpartition(".default")
            if not dot or (tail and not tail.startswith(".")):
                continue
            reference = params.get(f"{head}.ref{tail}")
            if reference is not None:
                reference.copy_(param)
                reference.requires_grad_(False)
    return True
