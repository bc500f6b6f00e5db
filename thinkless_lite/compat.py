"""Where the pinned libraries need a hand, in one place, each with the reason.

TRL 1.15 computes log-probabilities through a fused, chunked LM head whose kernels are Triton
(GPU only). On a CPU, or a GPU build without Triton, that path raises, so SFT and GRPO would not run
at all. These fallbacks use a plain forward there and leave TRL's path untouched everywhere else.

TRL also casts QLoRA adapter weights to bf16 (the QLoRA paper's advice for bf16 GPUs). Where bf16
is not native (CPU, T4) that makes every adapter matmul emulated: 3.4x slower steps measured on CPU.
There the trainable weights go back to fp32.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer
from trl.trainer import utils as trl_utils

from thinkless_lite.model import bf16_native


def fused_logprobs_available() -> bool:
    """Whether TRL's Triton log-prob kernels imported and a GPU is there to run them."""
    return getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None and torch.cuda.is_available()


def restore_adapter_precision(model) -> None:
    """Undo TRL's bf16 cast of trainable weights where bf16 is not native (see module docstring)."""
    if bf16_native():
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()


class PortableSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss falls back to the model's own cross-entropy where TRL's kernels cannot run.

    The collator's labels already carry -100 on prompt tokens (completion-only loss), so the plain
    ``Trainer.compute_loss`` (``model(**inputs).loss`` with ``num_items_in_batch``) is the same loss.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        restore_adapter_precision(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if fused_logprobs_available():
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = {k: v for k, v in inputs.items() if k != "completion_mask"}
        return super(SFTTrainer, self).compute_loss(model, inputs, return_outputs=return_outputs,
                                                    num_items_in_batch=num_items_in_batch)


def plain_logps_and_entropies(trainer, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                              compute_entropy=False, compute_aux_loss=False):
    """GRPO's per-token log-probs (at the sampling temperature) and entropies from a plain forward."""
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
