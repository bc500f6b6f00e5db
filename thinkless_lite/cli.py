"""``thinkless-lite``: one command per stage, all driven by one recipe (a shipped name or a YAML file).

    thinkless-lite quickstart                              # the whole mini-world pipeline, CPU, minutes
    thinkless-lite warmup --config mini                    # stage 1: hybrid SFT distillation (QLoRA)
    thinkless-lite rl --config mini                        # stage 2: DeGRPO
    thinkless-lite eval --config mini --adapter runs/mini/rl/adapter --sweep-tau 0.1,0.5,0.9
    thinkless-lite demo --config mini --adapter runs/quickstart/rl/adapter
    thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/merged --merge
    thinkless-lite build-base                              # regenerate the shipped tiny base model

Recipes shipped: {recipes} (default: mini); or the path of a YAML file.
Any key can be overridden: ``--set rl.alpha=0.05 --set model.backend=hf``; ``rl.*`` and ``warmup.*`` also
take any field of TRL's GRPOConfig / SFTConfig (``--set rl.top_p=0.95``; vLLM generation is not supported:
docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from thinkless_lite.config import ConfigError, RunConfig, load_config, recipe_names


def _common(parser: argparse.ArgumentParser, out_default: str | None = None) -> None:
    parser.add_argument("--config", default=None, metavar="RECIPE",
                        help=f"a shipped recipe by name ({', '.join(recipe_names())}) or a YAML file; default: mini")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set rl.max_steps=50 (repeatable)")
    parser.add_argument("--out", default=out_default, help="run folder (sets output_dir and name from the path)"
                        + (f"; default {out_default}" if out_default else ""))


def _load(args) -> RunConfig:
    """The recipe, its --set overrides, then the typed flags, which win; a flag's value reaches the config
    as given (a path with ': ' or '#' in it is not read as YAML)."""
    values: dict = {}
    if getattr(args, "out", None):
        from pathlib import Path

        out = Path(args.out)
        values.update(output_dir=out.parent.as_posix() or ".", name=out.name)
    if getattr(args, "adapter", None):
        values["model"] = {"adapter_path": args.adapter}
    if args.command == "eval" and (flags := _eval_values(args)):
        values["eval"] = flags
    if args.command == "demo" and (flags := _demo_values(args)):
        values["demo"] = flags
    return load_config(args.config, args.overrides, values)


EXPORT_HELP = "share a trained adapter: a PEFT-loadable folder or (--merge) a standalone model, a model card, the hub"
EXPORT_EPILOG = """examples:
  # the small adapter + tokenizer + model card, loadable with plain PEFT onto the base
  thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/export

  # a standalone model: the base reloaded in its own 16-bit (mini base: fp32) weights, the adapter merged;
  # AutoModelForCausalLM.from_pretrained(out) answers with <short> or <think> first, in transformers alone
  thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/merged --merge

  # export and push (token from HF_TOKEN); a failed push keeps the folder and says how to retry
  thinkless-lite export --adapter runs/r1-1.5b-t4/rl/adapter --out runs/r1-1.5b-t4/export \\
      --push-to-hub your-name/thinkless-r1-1.5b --private

  # push a finished export later
  thinkless-lite export --out runs/r1-1.5b-t4/export --push-to-hub your-name/thinkless-r1-1.5b

The card's results come from the run's eval report (<run>/eval/report.json, <run>/eval/*/report.json or the
quickstart's <run>/report.json) and its recipe from <run>/<stage>/resolved.yaml; --report / --config override.
See docs/share.md."""


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", help="trained adapter folder, e.g. runs/quickstart/rl/adapter (omit it to push "
                                          "a finished export given by --out)")
    parser.add_argument("--out", required=True, help="new (or empty) folder to write the export to")
    parser.add_argument("--merge", action="store_true",
                        help="merge into the base reloaded in its own 16-bit dtype (not the 4-bit one) and save a "
                             "standalone model (safetensors, tokenizer, chat template, generation config)")
    # thinkless_lite.export.merge.DTYPES, spelled out so that --help does not import torch and transformers
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="--merge: dtype to load, merge and save in (auto: the base checkpoint's own)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this hub repository "
                                                              "(token from HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="create the hub repository as private")
    parser.add_argument("--report", metavar="FILE", help="evaluation report.json for the card (default: found "
                                                         "in the adapter's run folder)")
    parser.add_argument("--config", metavar="FILE", help="the run's recipe for the card (default: the stage's "
                                                         "resolved.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")


def build_parser() -> argparse.ArgumentParser:
    description = __doc__.format(recipes=", ".join(recipe_names()))  # the names from the package, not typed here
    parser = argparse.ArgumentParser(prog="thinkless-lite", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("quickstart", help="end to end: warm-up, DeGRPO, evaluation, report.{json,md,png} + curves")
    _common(p, "runs/quickstart")
    p.add_argument("--skip-warmup", action="store_true", help="reuse <out>/warmup/adapter")

    p = sub.add_parser("warmup", help="stage 1: hybrid SFT distillation with QLoRA")
    _common(p)

    p = sub.add_parser("rl", help="stage 2: DeGRPO (or vanilla GRPO with --set rl.decoupled=false)")
    _common(p)
    p.add_argument("--adapter", help="start from this adapter instead of <run>/warmup/adapter")

    p = sub.add_parser("eval", help="accuracy, think ratio and tokens per benchmark; optional tau sweep")
    _common(p)
    p.add_argument("--adapter", help="trained adapter folder (default: none, the base model)")
    p.add_argument("--benchmarks", help="comma list: miniworld,gsm8k,math500,minerva_algebra,aime2024,amc")
    p.add_argument("--modes", help="comma list of auto,think,short")
    p.add_argument("--limit", type=int, help="questions per benchmark at most")
    p.add_argument("--data-file", help="local json/jsonl copy of the (single) benchmark instead of the hub")
    p.add_argument("--tau", type=float, help="auto mode routes to think when P(<think>) >= tau")
    p.add_argument("--sweep-tau", help="comma list of thresholds, e.g. 0,0.25,0.5,0.75,1")

    p = sub.add_parser("demo", help="Gradio page that shows which mode the model chose and why")
    _common(p)
    p.add_argument("--adapter", help="trained adapter folder")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")

    p = sub.add_parser("build-base", help="regenerate the shipped tiny mini-world base model (deterministic, CPU)")
    p.add_argument("--out", default=None, help="target folder (default: the packaged assets)")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default 1500)")

    p = sub.add_parser("export", help=EXPORT_HELP, description=EXPORT_HELP, epilog=EXPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _export_arguments(p)
    return parser


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _eval_values(args) -> dict:
    """The eval section's flags as typed values; comma lists become lists."""
    out: dict = {}
    if args.benchmarks:
        out["benchmarks"] = _comma_list(args.benchmarks)
    if args.modes:
        out["modes"] = _comma_list(args.modes)
    if args.limit is not None:
        out["limit"] = args.limit
    if args.data_file:
        out["data_file"] = args.data_file
    if args.tau is not None:
        out["tau"] = args.tau
    if args.sweep_tau:
        try:
            out["sweep_tau"] = [float(tau) for tau in _comma_list(args.sweep_tau)]
        except ValueError:
            raise ConfigError(f"--sweep-tau takes numbers within 0..1 separated by commas, e.g. 0.1,0.5,0.9; "
                              f"got {args.sweep_tau!r}") from None
    return out


def _demo_values(args) -> dict:
    """The demo section's flags, so that the config checks them with the recipe's values."""
    flags = {"host": args.host, "port": args.port, "share": True if args.share else None}
    return {key: value for key, value in flags.items() if value is not None}


def _build_base(args) -> dict:
    """Regenerate the tiny base; bad flags fail before minutes of pretraining, not after."""
    from pathlib import Path

    from thinkless_lite.mini_base import MINI_BASE_DIR, BaseTrainingConfig, train_base

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"build-base --steps must be a whole number >= 1 (pretraining steps; default 1500); "
                          f"got {args.steps}")
    out = Path(args.out or MINI_BASE_DIR)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"build-base --out {out} is a file; give a folder to write the model to")
    cfg = BaseTrainingConfig(**({"steps": args.steps} if args.steps is not None else {}))
    return train_base(out, cfg)


def _export(args) -> dict:
    """Export (and push), or push a finished export given by --out. Raises ExportError on bad input."""
    from thinkless_lite.export import ExportError, export, push_existing

    if args.private and not args.push_to_hub:
        logging.getLogger("thinkless_lite").warning("--private only matters with --push-to-hub; ignoring it")
    if args.adapter is None:
        if not args.push_to_hub:
            raise ExportError("--adapter is required (the trained adapter folder, e.g. runs/quickstart/rl/adapter); "
                              "without it, --out DIR --push-to-hub REPO pushes a finished export")
        if args.merge or args.report or args.config:
            raise ExportError("--merge, --report and --config need --adapter; to push a finished export give only "
                              "--out and --push-to-hub")
        return push_existing(args.out, args.push_to_hub, private=args.private)
    return export(args.adapter, args.out, merge=args.merge, push_to_hub=args.push_to_hub, private=args.private,
                  report=args.report, config=args.config, dtype=args.dtype, overwrite=args.overwrite)


def run(args) -> object:
    if args.command == "build-base":
        return _build_base(args)
    if args.command == "export":
        return _export(args)
    cfg = _load(args)
    # Unsloth must be imported before TRL to patch it; select_backend imports it when it will be used.
    from thinkless_lite.model import select_backend

    select_backend(cfg.model.backend)
    if args.command == "quickstart":
        from thinkless_lite.stages.quickstart import main as quickstart

        return quickstart(cfg, skip_warmup=args.skip_warmup)
    if args.command == "warmup":
        from thinkless_lite.stages.warmup import main as warmup

        return warmup(cfg)
    if args.command == "rl":
        from thinkless_lite.stages.rl import main as rl

        return rl(cfg)
    if args.command == "eval":
        from thinkless_lite.stages.evaluate import main as evaluate

        return evaluate(cfg)
    if args.command == "demo":
        from thinkless_lite.demo import app

        return app.main(cfg, adapter_path=cfg.model.adapter_path)
    raise AssertionError(args.command)


def _exit_code(err: Exception) -> int | None:
    """2 for input the user can fix before running again (the message says how), 1 for a failure the input
    could not predict (an unreachable hub, a NaN loss, a failed push), None for a bug (a traceback)."""
    if isinstance(err, ConfigError):  # first: the other classes' modules import transformers (seconds)
        return 2
    from thinkless_lite.callbacks import NonFiniteLossError
    from thinkless_lite.data.files import DataSourceError, HubUnreachableError
    from thinkless_lite.data.hybrid import WarmupDataError
    from thinkless_lite.export import ExportError, ExportRunError

    if isinstance(err, (HubUnreachableError, NonFiniteLossError, ExportRunError)):
        return 1
    if isinstance(err, (DataSourceError, WarmupDataError, ExportError)):
        return 2
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(args)
    except Exception as err:
        code = _exit_code(err)
        if code is None:
            raise
        print(f"{'config error' if isinstance(err, ConfigError) else 'error'}: {err}", file=sys.stderr)
        return code
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
