"""``--verify-loss``: the trainer's DeGRPO loss and LoRA gradients on one fixed batch, no generation; and the
same batch in two micro-batches (gradient accumulation), whose summed loss and gradients must match.

The same checkpoint, the same LoRA weights (every trainable tensor drawn from a seed derived from its
name, LoRA B != 0 so every gradient is non-zero) and the same batch (``inputs.loss_check_batch``: prompts
of mixed lengths, so the rows carry different left padding) under each backend. The worker computes
``trainer.compute_loss`` with DeGRPO's (B, T) advantages, as the training loop does, its gradients, and
what the loss would be with one advantage per sequence (the check's sensitivity). For hf it also computes
the package's reference, ``thinkless_lite.losses.degrpo_loss`` on plain-forward log-probs, and compares
gradients; the parent compares unsloth's gradients with hf's (``report.verify_checks``).
beta is 0 (no KL term); alpha is ``--verify-alpha`` (0.5): a heavy control-token column makes a wrong
advantage layout obvious in both the loss and the gradients.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.gpu.common import canonical_name
from benchmarks.gpu.inputs import loss_check_batch
from benchmarks.gpu.report import compare_grads
from benchmarks.gpu.loading import start_trainer


def set_deterministic_adapter(model, std: float = 0.02) -> int:
    """Every trainable parameter from a seed derived from its canonical name: equal across backends."""
    import zlib

    import torch

    count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                generator = torch.Generator().manual_seed(zlib.crc32(canonical_name(name).encode()))
                p.copy_((torch.randn(p.shape, generator=generator) * std).to(p.dtype))
                count += 1
    return count


def accumulated(trainer, model, inputs: dict, advantages, micro_batches: int, grads_of) -> tuple[float, dict]:
    """The batch in ``micro_batches`` row slices, as TRL splits a generation batch for gradient accumulation
    (each slice keeps the whole batch's width and normaliser ``num_items_in_batch``): the summed loss and the
    summed gradients, which must equal the one-batch ones."""
    import torch

    rows = advantages.shape[0]
    total, summed = 0.0, {}
    for index in torch.arange(rows, device=advantages.device).chunk(micro_batches):
        micro = {k: (v[index] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows else v)
                 for k, v in inputs.items()}
        loss = trainer.compute_loss(model, {**micro, "advantages": advantages[index]})
        total += float(loss.detach())
        for name, grad in grads_of(loss).items():
            summed[name] = summed[name] + grad if name in summed else grad
    return total, summed


def run(spec: dict, record: dict) -> None:
    import torch

    from thinkless_lite.compat import plain_logps_and_entropies
    from thinkless_lite.losses import degrpo_loss

    clock, cfg, loaded, trainer = start_trainer(spec, record, lambda tokenizer: ["a b c"])
    model = trainer.model
    record["adapter_parameters"] = set_deterministic_adapter(model)  # after the trainer's own dtype casts
    batch = loss_check_batch(loaded.tokenizer.pad_token_id, spec["prompts"] * spec["generations"],
                             spec["generations"], spec["prompt_len"], spec["completion_len"], cfg.rl.alpha,
                             spec["seed"], control_ids=list(loaded.control_ids.values()))
    device = trainer.accelerator.device
    inputs = {k: batch[k].to(device) for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask",
                                               "num_items_in_batch")}
    inputs["old_per_token_logps"] = None  # ratio 1: the loss's value is the closed form
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    params = {canonical_name(n): p for n, p in model.named_parameters() if p.requires_grad}

    def grads_of(loss) -> dict:
        model.zero_grad(set_to_none=True)
        loss.backward()
        out = {k: p.grad.detach().float().cpu().clone() for k, p in params.items() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    clock.reset_peak()
    loss = trainer.compute_loss(model, {**inputs, "advantages": batch["advantages_bt"].to(device)})
    grads = grads_of(loss)
    record.update(loss=float(loss.detach()), expected_loss_bt=batch["expected_loss_bt"],
                  expected_loss_if_per_sequence=batch["expected_loss_b"], alpha=cfg.rl.alpha,
                  grad_tensors=len(grads), zero_grad_names=[k for k, g in grads.items() if not g.abs().max() > 0][:50],
                  missing_grad_tensors=sorted(set(params) - set(grads))[:20], memory=clock.peaks(),
                  batch={"sequences": len(batch["prompt_ids"]), "group": spec["generations"],
                         "prompt_lengths": inputs["prompt_mask"].sum(1).tolist(),
                         "completion_lengths": inputs["completion_mask"].sum(1).tolist()})
    micro_batches = int(spec.get("accumulation", 2))
    loss_sum, summed = accumulated(trainer, model, inputs, batch["advantages_bt"].to(device), micro_batches, grads_of)
    record["accumulation"] = {"micro_batches": micro_batches, "loss_sum": loss_sum, **compare_grads(summed, grads)}
    grads_path = Path(spec["work_dir"]) / "grads.pt"
    torch.save(grads, grads_path)
    record["grads_file"] = str(grads_path)
    per_sequence = {**inputs, "advantages": batch["advantages_b"].to(device)}
    if spec["backend"] != "hf":  # compared with hf's gradients by the parent; (B,) loss for the table only
        try:
            with torch.no_grad():
                record["loss_with_per_sequence_advantages"] = float(trainer.compute_loss(model, per_sequence))
        except Exception as err:  # noqa: BLE001 - a diagnostic, not the check
            record["loss_with_per_sequence_advantages"] = f"failed: {type(err).__name__}: {err}"[:500]
        return
    # Sensitivity: how far one advantage per sequence (DeGRPO's weights lost) moves the gradients.
    loss_b = trainer.compute_loss(model, per_sequence)
    record["loss_with_per_sequence_advantages"] = float(loss_b.detach())
    record["per_sequence_vs_bt"] = compare_grads(grads_of(loss_b), grads)
    # The package's reference: degrpo_loss on plain-forward log-probs of the same model and batch. A failure
    # here fails its two checks, not the run: unsloth is still compared with the gradients saved above.
    try:
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, _, _ = plain_logps_and_entropies(trainer, model, input_ids, attention, spec["completion_len"],
                                                batch_size=1)
        reference = degrpo_loss(logps, logps.detach(), batch["advantages_b"].to(device), inputs["completion_mask"],
                                alpha=cfg.rl.alpha, clip_eps=cfg.rl.trl["epsilon"], decoupled=True)
        record["reference"] = {"loss": float(reference.detach()), **compare_grads(grads, grads_of(reference))}
    except Exception as err:  # noqa: BLE001 - reported as the checks' failure
        record["reference"] = {"error": f"{type(err).__name__}: {err}"[:1000]}
