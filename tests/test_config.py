import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from thinkless_lite.config import ConfigError, load_config, save_resolved, to_dict
from thinkless_lite.cli import build_parser, main


REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))


def differences(written: dict, loaded: dict, prefix: str = "") -> list[str]:
    """The recipe's keys whose loaded value is not the one written in its YAML."""
    wrong = []
    for key, value in written.items():
        if isinstance(value, dict) and isinstance(loaded.get(key), dict) and all(isinstance(k, str) for k in value):
            wrong += differences(value, loaded[key], f"{prefix}{key}.")
        elif key not in loaded or loaded[key] != value:
            wrong.append(f"{prefix}{key}")
    return wrong


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_every_shipped_recipe_loads_as_written(path):
    cfg = load_config(path)
    assert differences(yaml.safe_load(path.read_text()), to_dict(cfg)) == []
    assert load_config(path.stem) == cfg                              # by name, as `--config smollm2_135m_cpu`


def test_the_cli_help_names_every_shipped_recipe(capsys):
    """The help's lists of recipes are exactly the shipped ones, whole names (not "mini" found in "mini-world")."""
    (listed,) = re.findall(r"Recipes shipped: (.*) \(default: mini\)", build_parser().format_help())
    assert listed.split(", ") == [path.stem for path in RECIPES]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["warmup", "--help"])
    (listed,) = re.findall(r"a shipped recipe by name \((.*?)\) or a YAML file", " ".join(capsys.readouterr().out.split()))
    assert listed.split(", ") == [path.stem for path in RECIPES]


def test_overrides_are_typed_and_nested():
    cfg = load_config("configs/mini.yaml", ["rl.alpha=0.25", "model.backend=hf", "eval.sweep_tau=[0.1, 0.9]"])
    assert cfg.rl.alpha == 0.25 and cfg.model.backend == "hf" and cfg.eval.sweep_tau == [0.1, 0.9]
    assert isinstance(load_config(None, ["rl.alpha=1"]).rl.alpha, float)  # an int literal is fine for a float
    assert load_config(None, ["rl.learning_rate=1e-4"]).rl.trl["learning_rate"] == 1e-4  # YAML 1.1 reads this as a string


def test_typed_values_win_over_overrides_and_are_checked_the_same_way():
    cfg = load_config(None, ["rl.alpha=0.5", "rl.beta=0.1"], {"rl": {"alpha": 0.25}, "model": {"adapter_path": "a: b"}})
    assert (cfg.rl.alpha, cfg.rl.trl["beta"], cfg.model.adapter_path) == (0.25, 0.1, "a: b")
    with pytest.raises(ConfigError, match="model.lora_r: expected int"):
        load_config(None, values={"model": {"lora_r": "8"}})
    with pytest.raises(ConfigError, match=r"model.lora_rank \(did you mean lora_r\?\)"):
        load_config(None, values={"model": {"lora_rank": 8}})


def test_unknown_key_names_it_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.lora_rank=8"])
    assert "model.lora_rank (did you mean lora_r?)" in str(err.value) and "max_seq_length" in str(err.value)


def test_trainer_sections_take_trls_own_fields_and_name_a_typo_before_any_model_loads(tmp_path):
    """rl.* is TRL's GRPOConfig plus DeGRPO's keys: any GRPOConfig field passes through, a typo does not."""
    from trl import GRPOConfig

    from thinkless_lite.config import trl_arguments
    from thinkless_lite.stages.rl import grpo_config

    cfg = load_config(None, ["rl.weight_decay=0.05", "rl.epsilon=0.3", "rl.scale_rewards=group"])
    args = grpo_config(cfg, tmp_path)
    assert isinstance(args, GRPOConfig) and args.weight_decay == 0.05 and args.epsilon == 0.3
    assert args.scale_rewards == "group" and args.loss_type == "dapo" and args.beta == cfg.rl.trl["beta"]
    assert args.per_device_train_batch_size == cfg.rl.prompts_per_step * cfg.rl.trl["num_generations"]
    typo = load_config(None, ["rl.alpah=0.1"])  # not a DeGRPO key: kept for TRL, which has no such field
    with pytest.raises(ConfigError) as err:
        trl_arguments(typo.rl, tmp_path)
    assert "rl.alpah (did you mean alpha?)" in str(err.value) and "any field of TRL's GRPOConfig" in str(err.value)
    with pytest.raises(ConfigError, match=r"warmup.learning_rat \(did you mean learning_rate\?\)"):
        trl_arguments(load_config(None, ["warmup.learning_rat=0.1"]).warmup, tmp_path)


def test_trl_fields_are_typed_by_trls_own_classes(tmp_path):
    """TRL's annotations decide: int|None takes null, a logger list takes one name, an int is no str."""
    from thinkless_lite.config import trl_arguments

    cfg = load_config(None, ["rl.save_total_limit=null", "rl.report_to=wandb", "rl.max_grad_norm=2",
                             "warmup.logging_steps=0.5"])
    args = trl_arguments(cfg.rl, tmp_path)
    assert args["save_total_limit"] is None and args["report_to"] == "wandb"
    assert trl_arguments(cfg.warmup, tmp_path)["logging_steps"] == 0.5  # TRL: a share of all steps when < 1
    assert args["max_grad_norm"] == 2.0 and isinstance(args["max_grad_norm"], float)  # TRL's field is a float
    for override, message in [("rl.max_steps=ten", "rl.max_steps: expected int, got 'ten' (str); see TRL's GRPOConfig"),
                              ("rl.temperature=[1]", "rl.temperature: expected float, got [1]"),
                              ("rl.use_vllm=maybe", "rl.use_vllm: expected bool, got 'maybe'")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            trl_arguments(load_config(None, [override]).rl, tmp_path)
    with pytest.raises(ConfigError, match=re.escape("warmup.max_steps: expected int, got 2.5")):
        trl_arguments(load_config(None, ["warmup.max_steps=2.5"]).warmup, tmp_path)


def test_trl_fields_are_not_declared_again_and_their_defaults_are_trls_fields():
    """Our sections declare only our own keys; the defaults they pick for TRL's are names TRL has."""
    from dataclasses import fields

    from trl import GRPOConfig, SFTConfig

    from thinkless_lite.config import RLConfig, WarmupConfig

    for section, trl_class in [(WarmupConfig, SFTConfig), (RLConfig, GRPOConfig)]:
        ours = {f.name for f in fields(section)} - {"trl"}
        theirs = {f.name for f in fields(trl_class)}
        assert ours and not ours & theirs, ours & theirs
        assert set(section.TRL_DEFAULTS) <= theirs, set(section.TRL_DEFAULTS) - theirs


def test_trl_fields_read_from_the_trl_mapping_and_change_like_the_sections_own():
    from thinkless_lite.config import TrainerSection

    cfg = load_config(None, ["rl.max_steps=7", "rl.weight_decay=0.1"])
    assert (cfg.rl.trl["max_steps"], cfg.rl.trl["weight_decay"], cfg.rl.trl["learning_rate"]) == (7, 0.1, 1e-4)
    changed = cfg.rl.updated(alpha=0.5, max_steps=3, optim="sgd")
    assert (changed.alpha, changed.trl["max_steps"], changed.trl["optim"], changed.trl["weight_decay"]) == \
        (0.5, 3, "sgd", 0.1)
    assert cfg.rl.trl["max_steps"] == 7 and "optim" not in cfg.rl.trl  # a copy: the original is untouched
    assert "alpha" not in changed.trl
    assert not hasattr(cfg.rl, "max_steps") and "__getattr__" not in vars(TrainerSection)  # no attribute magic


def test_every_degrpo_setting_reaches_the_trainers_args_and_is_checked_in_one_place(tmp_path):
    """rl.<DeGRPO key> -> DeGRPOConfig.<key>, all of them, by one loop; a bad value fails alike in both."""
    from dataclasses import fields

    from thinkless_lite.degrpo_config import DeGRPOConfig
    from thinkless_lite.degrpo_settings import DeGRPOSettings
    from thinkless_lite.stages.rl import grpo_config

    cfg = load_config(None, ["rl.alpha=0.3", "rl.control_gradient=natural", "rl.mode_balance_end=0.25",
                             "rl.censor_truncated=false", "rl.control_rows_lr_scale=2"])
    args = grpo_config(cfg, tmp_path)
    assert {f.name: getattr(args, f.name) for f in fields(DeGRPOSettings)} == \
        {f.name: getattr(cfg.rl, f.name) for f in fields(DeGRPOSettings)}
    assert args.mask_truncated_completions is False
    assert grpo_config(load_config(None), tmp_path).censor_truncated is True  # auto, resolved: the mini recipe censors
    message = "rl.mode_centering must be within 0..1; got 1.5"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, ["rl.mode_centering=1.5"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        DeGRPOConfig(output_dir=str(tmp_path), use_cpu=True, mode_centering=1.5)
    with pytest.raises(ConfigError, match="rl.scale_rewards='batch'"):  # before any model loads, not in the trainer
        load_config(None, ["rl.scale_rewards=batch", "rl.censor_truncated=true"])


@pytest.mark.parametrize("section", ["warmup", "rl"])
def test_the_trl_fields_a_stage_sets_are_refused_in_a_recipe_and_set_by_the_stage(section, tmp_path):
    """No silent override: each TRL field the stage sets (``STAGE_SETS``) is a ConfigError at load naming the key
    and what to set instead, and the stage's arguments carry the stage's value, whatever the recipe says around it."""
    from thinkless_lite.stages.rl import grpo_config
    from thinkless_lite.stages.warmup import sft_config

    cfg = load_config(None)
    owned = getattr(cfg, section).STAGE_SETS
    for key, why in owned.items():
        with pytest.raises(ConfigError, match=re.escape(f"{section}.{key} is set by the stage, not by a recipe: {why}")):
            load_config(None, [f"{section}.{key}=true"])
    args = (sft_config if section == "warmup" else grpo_config)(cfg, tmp_path)
    stage = {"warmup": dict(completion_only_loss=True, max_length=cfg.model.max_seq_length, packing=False,
                            gradient_checkpointing=False),
             "rl": dict(loss_type="dapo", gradient_checkpointing=False, mask_truncated_completions=True,
                        per_device_train_batch_size=cfg.rl.prompts_per_step * cfg.rl.trl["num_generations"])}[section]
    assert set(stage) == set(owned)
    assert {key: getattr(args, key) for key in stage} == stage


def test_numbers_in_exponent_form_are_numbers_in_recipes_and_overrides(tmp_path):
    """YAML 1.1 reads ``1e-4`` as a string; recipes and --set read it as the number it is, as YAML 1.2 does."""
    path = tmp_path / "lr.yaml"
    path.write_text("warmup:\n  learning_rate: 5e-4\nrl:\n  alpha: 1e-3\n  max_steps: 10\n", encoding="utf-8")
    cfg = load_config(path, ["rl.learning_rate=3E-5"])
    assert (cfg.warmup.trl["learning_rate"], cfg.rl.alpha, cfg.rl.trl["learning_rate"], cfg.rl.trl["max_steps"]) == \
        (5e-4, 1e-3, 3e-5, 10)
    assert isinstance(cfg.rl.trl["max_steps"], int) and isinstance(cfg.rl.alpha, float)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  lora_rank: 8\n")
    with pytest.raises(ConfigError, match=r"model.lora_rank \(did you mean lora_r\?\)"):
        load_config(path)


@pytest.mark.parametrize("override, fragment", [
    ("rl.alpha=abc", "rl.alpha: expected float"),
    ("model.lora_r=1.5", "model.lora_r: expected int"),
    ("model.backend=tpu", "model.backend must be"),
    ("warmup.data.short_share=1.5", "short_share"),
    ("rl.num_generations=1", "num_generations"),
    ("eval.sweep_tau=[2]", "tau must be a number within 0..1"),
    ("rl.scale_rewards=sometimes", "rl.scale_rewards must be one of none, group, batch"),
    ("rl.control_gradient=sideways", "rl.control_gradient must be one of exact, natural"),
    ("rl.mode_centering=1.5", "rl.mode_centering must be within 0..1"),
    ("rl.control_rows_lr_scale=0", "rl.control_rows_lr_scale must be > 0"),
    ("rl.mode_balance=0", "rl.mode_centering needs both modes in every group"),
    ("rl.mode_threshold_lr=-1", "rl.mode_threshold_lr must be >= 0"),
    ("rl.mode_balance=0.1", r"rl.mode_balance=0.1 with rl.num_generations=8 forces no answer of each mode; use at least 0.25"),
    ("rl.mode_balance_end=0", r"rl.mode_balance_end \(the share forced at step 46 on the way from rl.mode_balance=0.5\)=0.244444 .* forces no answer"),
    ("miniworld.difficulty_weights={0: 1}", "difficulty_weights has a bad entry"),
    ("rl=3", "expected a mapping"),
    ("noequals", "section.key=value"),
])
def test_bad_values(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_recipes_by_name_and_a_missing_one_lists_them():
    assert load_config("mini") == load_config(None) == load_config("configs/mini.yaml") == load_config("mini.yaml")
    assert load_config("r1_distill_1.5b_t4").model.name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    with pytest.raises(ConfigError, match="neither a YAML file nor a shipped recipe; recipes: mini, "):
        load_config("nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/mini.yaml", ["rl.max_steps=7"])
    path = save_resolved(cfg, tmp_path)
    assert load_config(path).rl.trl["max_steps"] == 7


def test_a_resolved_yaml_of_earlier_versions_still_loads(tmp_path):
    """Before TRL's fields moved into ``trl``, resolved.yaml wrote them beside an empty ``trl`` mapping;
    export and inspect read old run folders, so that layout loads to the same config."""
    old = tmp_path / "resolved.yaml"
    old.write_text("rl:\n  alpha: 0.5\n  max_steps: 7\n  learning_rate: 0.001\n  trl: {weight_decay: 0.1}\n"
                   "warmup:\n  max_steps: 9\n  trl: {}\n", encoding="utf-8")
    cfg = load_config(old)
    assert cfg == load_config(None, ["rl.alpha=0.5", "rl.max_steps=7", "rl.learning_rate=0.001",
                                     "rl.weight_decay=0.1", "warmup.max_steps=9"])
    assert "trl" not in to_dict(cfg)["rl"] and to_dict(cfg)["rl"]["weight_decay"] == 0.1


def test_cli_help_teaches(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for command in ["quickstart", "warmup", "rl", "eval", "demo", "build-base", "--set rl.alpha"]:
        assert command in text


@pytest.mark.parametrize("path", ["runs/a: b/adapter", "runs/run #1/adapter", "runs/k=v #2", "2024"])
def test_cli_paths_reach_the_config_as_given(path):
    """--adapter, --out and --data-file are typed values, not --set strings: read as YAML, ': ' made a mapping,
    ' #' a comment, and '2024' a number."""
    from thinkless_lite.cli import _load

    args = build_parser().parse_args(["eval", "--adapter", path, "--out", f"{path}/eval", "--data-file", path])
    cfg = _load(args)
    assert (cfg.model.adapter_path, cfg.output_dir, cfg.name, cfg.eval.data_file) == (path, path, "eval", path)


def test_cli_eval_lists_are_typed():
    from thinkless_lite.cli import _load

    args = build_parser().parse_args(["eval", "--benchmarks", "miniworld, gsm8k", "--modes", "auto,short",
                                      "--sweep-tau", "0.5,1", "--tau", "0.25", "--limit", "3"])
    e = _load(args).eval
    assert (e.benchmarks, e.modes, e.sweep_tau, e.tau, e.limit) == (["miniworld", "gsm8k"], ["auto", "short"],
                                                                     [0.5, 1.0], 0.25, 3)
    with pytest.raises(ConfigError, match="--sweep-tau takes numbers"):
        _load(build_parser().parse_args(["eval", "--sweep-tau", "0.5,half"]))


def test_cli_config_error_exits_2(capsys):
    assert main(["warmup", "--set", "warmup.typo=1"]) == 2
    assert "warmup.typo" in capsys.readouterr().err


def test_config_is_the_bottom_of_the_house():
    """Loading a recipe imports no data layer, reward or grader (grading registers an atexit handler)."""
    code = ("import sys, thinkless_lite.config; print(sorted(m for m in sys.modules if m.startswith("
            "('thinkless_lite.data', 'thinkless_lite.rewards', 'thinkless_lite.grading'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_degrpo_config_runs_the_init_of_the_grpo_config_it_subclasses(monkeypatch, tmp_path):
    """Under Unsloth, ``trl.GRPOConfig`` is Unsloth's subclass with an ``__init__`` of its own (it sets its fields
    after TRL's); DeGRPOConfig, built on whichever class TRL exports when it is imported, keeps running it."""
    import runpy

    import trl

    from thinkless_lite import degrpo_config

    class UnslothLike(trl.GRPOConfig):
        def __init__(self, *args, unsloth_num_chunks=-1, **kwargs):
            super().__init__(*args, **kwargs)
            self.unsloth_num_chunks = unsloth_num_chunks

    monkeypatch.setattr(trl, "GRPOConfig", UnslothLike)
    on_unsloth = runpy.run_path(degrpo_config.__file__)["DeGRPOConfig"]  # a fresh copy; the module stays as it is
    args = on_unsloth(output_dir=str(tmp_path), use_cpu=True, unsloth_num_chunks=4, alpha=0.5, mode_balance=0.25)
    assert isinstance(args, UnslothLike) and args.unsloth_num_chunks == 4
    assert (args.alpha, args.mode_balance, args.loss_type) == (0.5, 0.25, "dapo")
    with pytest.raises(ConfigError, match="rl.mode_balance=0.1 with rl.num_generations=8"):
        on_unsloth(output_dir=str(tmp_path), use_cpu=True, mode_balance=0.1)
