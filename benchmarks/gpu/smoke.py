"""Part (a) of the GPU check (``--load-only``): the backend imports offline, the model loads through
``thinkless_lite.model.load_model`` as training loads it, every tensor the recipe trains is trainable
(control rows included: ``frozen_adapter_tensors`` is empty) and one backward pass through the control
tokens reaches every control-row tensor. Seconds, on the smallest untied shape: the first thing a GPU
lease must prove, before any long part can spend the time."""

from __future__ import annotations

from benchmarks.gpu.loading import Clock, load, run_config


def run(spec: dict, record: dict) -> None:
    import torch

    from thinkless_lite.control_rows import TRAINABLE_ROWS_PARAM

    clock = Clock()
    cfg = run_config(spec)
    loaded = load(cfg, clock, record)
    model, tokenizer = loaded.model, loaded.tokenizer
    record["unsloth_version"] = _version("unsloth")
    text = tokenizer("a b c d", add_special_tokens=False)["input_ids"]
    ids = list(loaded.control_ids.values())
    input_ids = torch.tensor([text + [ids[0]] + text + [ids[1]] + text], device=model.get_input_embeddings().weight.device)
    model.train()
    began = clock.now()
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    record["backward_s"] = round(clock.now() - began, 3)
    grads = {n: (float(p.grad.abs().max()) if p.grad is not None else None)
             for n, p in model.named_parameters() if TRAINABLE_ROWS_PARAM in n and n.endswith(".default")}
    record.update(loss=float(loss.detach()), control_row_grads=grads, memory=clock.peaks())
    model.zero_grad(set_to_none=True)


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
