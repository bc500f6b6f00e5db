"""Share what you trained: a folder that plain transformers / PEFT / vLLM load, a model card, the hub.

    thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/export
    thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/merged --merge
    thinkless-lite export --adapter runs/r1/rl/adapter --out runs/r1/export --push-to-hub you/thinkless-r1 --private
    thinkless-lite export --out runs/r1/export --push-to-hub you/thinkless-r1     # push a finished export later

Two kinds of export, each with a model card (``README.md``) and ``thinkless_export.json``:

* **adapter** (default): the LoRA weights and the trained control-token rows (MBs, not the embedding tables), the
  tokenizer with the control tokens, a distinct pad token and the neutralised chat template. It loads with plain
  PEFT onto the named base: ``AutoPeftModelForCausalLM.from_pretrained(folder)`` in one line (PEFT resizes the
  base to the tokenizer itself), or ``PeftModel.from_pretrained`` after ``base.resize_token_embeddings(...)``.
  Every trained row's full value is in the adapter, so however the loader initialises the new rows, the model
  is the one that was trained.
* **merged** (``--merge``): the base reloaded from its own checkpoint in its own dtype, resized, the adapter
  merged, saved as safetensors with tokenizer, chat template and a generation config whose end and pad ids are
  the tokenizer's (:mod:`.merge` says why not into the 4-bit base). ``AutoModelForCausalLM.from_pretrained``
  then answers with the control token first, in transformers alone (and the folder serves as is in vLLM).

The card's numbers come from the run's evaluation report and its recipe from the stage's ``resolved.yaml``
(:mod:`.inspect` finds them; ``--report`` / ``--config`` override). Without a report the card gives no numbers.

Modules: :mod:`.inspect` (is it a thinkless adapter, what describes it), :mod:`.merge` (write the weights),
:mod:`.card` (the model card), :mod:`.hub` (token and push), :mod:`.folder` (file names, the out folder, errors).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from thinkless_lite import __version__
from thinkless_lite.export.card import CardFacts, render_card
from thinkless_lite.export.folder import (CARD, MARKER, RECIPE_COPY, REPORT_COPY, ExportError, ExportRunError,
                                          check_out, say)
from thinkless_lite.export.hub import check_repo_id, push_existing, push_folder, require_token
from thinkless_lite.export.inspect import inspect_adapter, stage_of
from thinkless_lite.export.merge import DTYPES, write_adapter, write_merged

__all__ = ["export", "push_existing", "push_folder", "inspect_adapter", "render_card", "CardFacts", "ExportError",
           "ExportRunError", "DTYPES"]


def _shown(path: Path, adapter: Path) -> str:
    """A report's path as the card shows it: relative to the run's parent folder (no local paths on the hub)."""
    _, run_dir = stage_of(adapter)
    if run_dir is not None:
        try:
            return path.resolve().relative_to(run_dir.resolve().parent).as_posix()
        except ValueError:
            pass
    return path.name


def export(adapter: str | os.PathLike, out: str | os.PathLike, *, merge: bool = False, push_to_hub: str | None = None,
           private: bool = False, report: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
           dtype: str = "auto", token: str | None = None, overwrite: bool = False) -> dict:
    """Export ``adapter`` into ``out`` (adapter + card, or ``merge=True``: a merged model + card); optionally push.

    Bad input raises :class:`ExportError` before anything is written. The folder is built beside ``out`` and
    moved into place when complete, so a failure never leaves half an export. A failed push raises after the
    export is in place (the message says how to push it later). Returns what was written.
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if push_to_hub is not None:
        check_repo_id(push_to_hub)
    info = inspect_adapter(adapter, report=report, config=config)
    check_out(out, info.adapter, overwrite)
    if push_to_hub is not None:
        require_token(token, push_to_hub)
    kind = "merged" if merge else "adapter"
    say(f"{kind} export of {info.adapter} (stage: {info.stage or 'unknown'}; base: {info.base}; report: "
         f"{', '.join(map(str, info.report_paths)) or 'none found'}; recipe: {info.recipe_path or 'none found'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        facts = write_merged(info, tmp, dtype) if merge else write_adapter(info, tmp)
        model_ref = push_to_hub or str(out)
        card = render_card(CardFacts(
            kind=kind, model_ref=model_ref, base=info.base, base_hub_id=info.base_hub_id, tokens=info.tokens,
            stage=info.stage, report=info.report, report_sources=[_shown(p, info.adapter) for p in info.report_paths],
            recipe=info.recipe, needs_resize=facts["needs_resize"], dtype=facts.get("dtype"),
            untrained_rows=facts["untrained_rows"], version=__version__))
        (tmp / CARD).write_text(card, encoding="utf-8")
        if info.report:
            (tmp / REPORT_COPY).write_text(json.dumps(info.report, indent=2, default=str) + "\n", encoding="utf-8")
        if info.recipe:
            (tmp / RECIPE_COPY).write_text(yaml.safe_dump(info.recipe, sort_keys=False), encoding="utf-8")
        tokenizer = info.tokenizer
        marker = {
            "format": 1, "kind": kind, "model_ref": model_ref, "source_adapter": str(info.adapter),
            "stage": info.stage, "base_model_name_or_path": info.base, "base_hub_id": info.base_hub_id,
            "control_tokens": {"short": info.tokens.short, "think": info.tokens.think, "think_end": info.tokens.think_end},
            "control_token_ids": {name: tokenizer.convert_tokens_to_ids(t) for name, t in
                                  (("short", info.tokens.short), ("think", info.tokens.think),
                                   ("think_end", info.tokens.think_end))},
            "pad_token_id": tokenizer.pad_token_id,
            "report": [str(p) for p in info.report_paths], "recipe": str(info.recipe_path) if info.recipe_path else None,
            "thinkless_lite_version": __version__, **facts,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    say(f"wrote {out} ({size / 2**20:.1f} MiB): {', '.join(files)}")
    result = {"out": str(out), "kind": kind, "files": files, "bytes": size, "card": str(out / CARD),
              "base": info.base, "report": [str(p) for p in info.report_paths], "pushed": None}
    if push_to_hub is not None:
        result["pushed"] = push_folder(out, push_to_hub, private=private, token=token)
    return result
