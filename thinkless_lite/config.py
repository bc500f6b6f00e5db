"""Typed run configuration: one YAML recipe -> nested dataclasses, with CLI overrides.

Recipes ship with the package (``configs/`` in the repository, ``thinkless_lite.recipes`` once installed)
and are addressed by name (``--config mini``) or by path. The dataclass defaults *are* the ``mini``
recipe, so ``load_config()`` and ``load_config("mini")`` are the same run.

Trainer settings are TRL's own: every key of ``warmup`` is a field of TRL's ``SFTConfig`` unless it is
one of thinkless_lite's (``data``), and every key of ``rl`` a field of ``GRPOConfig`` unless it is one of
DeGRPO's (:class:`thinkless_lite.degrpo_settings.DeGRPOSettings`, which the trainer's ``DeGRPOConfig`` shares)
or the stage's. TRL's fields are not declared again here: a section keeps them in its ``trl`` mapping
(``cfg.rl.trl["learning_rate"]``), over the few defaults the pipeline picks for them (``TRL_DEFAULTS``), and
their names and types are checked against TRL's class itself by :func:`trl_arguments` when the stage starts,
before a model loads (TRL cannot be imported while the config loads: Unsloth, when used, must be imported
first). Unknown or mistyped keys are errors that name the key and the allowed ones, because a typo should
never silently fall back to a default during a two-hour Colab run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import yaml

from thinkless_lite.degrpo_settings import DeGRPOSettings
from thinkless_lite.parsing import (ConfigError, from_dict, merge, parse_overrides, read_yaml, typed,
                                    unknown_keys_error)
from thinkless_lite.settings import MiniWorldConfig, RewardTable
from thinkless_lite.tokens import ControlTokens, Routing


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ModelConfig:
    name_or_path: str = field(default="thinkless-lite/mini-base", metadata=_help(
        "Hub id, local folder, local .gguf file, or the embedded 'thinkless-lite/mini-base'."))
    backend: str = field(default="auto", metadata=_help(
        "auto | unsloth | hf | full. auto = unsloth on CUDA when it imports, else hf (bitsandbytes NF4 + PEFT LoRA)."))
    load_in_4bit: bool = field(default=True, metadata=_help("Quantise the frozen base to NF4 (QLoRA). Ignored by backend=full."))
    dtype: str = field(default="auto", metadata=_help(
        "auto | float32 | bfloat16 | float16: compute dtype (auto: bf16 on GPUs that have it, fp16 on T4, fp32 on CPU)."))
    lora_r: int = field(default=16, metadata=_help("LoRA rank."))
    lora_alpha: int = field(default=32, metadata=_help("LoRA scaling numerator."))
    lora_dropout: float = field(default=0.0, metadata=_help("LoRA dropout."))
    lora_target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"],
                                      metadata=_help("Linear layers that get adapters."))
    max_seq_length: int = field(default=256, metadata=_help("Longest prompt + completion in tokens (Unsloth needs it up front)."))
    adapter_path: str | None = field(default=None, metadata=_help("Start from this LoRA adapter folder (e.g. the warm-up output)."))
    gradient_checkpointing: bool = field(default=False, metadata=_help("Trade compute for memory; turn on for 1.5B+ models on a T4."))
    train_control_rows: str = field(default="all", metadata=_help(
        "new: train only the control-token rows the base lacked; all: also rows it already had (use when its "
        "template writes <think> into the prompt, so that row was never predicted)."))
    short_token: str = field(default="<short>", metadata=_help("Control token for a direct answer."))
    think_token: str = field(default="<think>", metadata=_help("Control token that opens a chain of thought."))
    think_end_token: str = field(default="</think>", metadata=_help("Closes the chain of thought."))
    system_prompt: str | None = field(default=None, metadata=_help("Optional system message for every prompt."))
    chat_template: str | None = field(default=None, metadata=_help("Override the tokenizer's chat template (Jinja)."))
    tokenizer: str | None = field(default=None, metadata=_help(
        "Take the tokenizer from this folder or hub id instead of the weights' (e.g. the original tokenizer of a "
        "model given as .gguf, when its conversion is broken); it must use the same token ids."))

    @property
    def control_tokens(self) -> ControlTokens:
        return ControlTokens(self.short_token, self.think_token, self.think_end_token)


@dataclass
class WarmupDataConfig:
    source: str = field(default="miniworld", metadata=_help("miniworld | paired | generate."))
    path: str | None = field(default=None, metadata=_help("paired/generate: hub dataset id or local json/jsonl/csv/parquet file."))
    split: str = field(default="train", metadata=_help("Hub split."))
    hub_config: str | None = field(default=None, metadata=_help("Hub dataset config name."))
    question_column: str = field(default="question", metadata=_help("Column with the question."))
    answer_column: str | None = field(default="answer", metadata=_help("Column with the gold answer (needed by the correctness filter)."))
    long_column: str | None = field(default=None, metadata=_help(
        "paired: column with the long (reasoning) response; without </think> the whole text is the reasoning and its final answer is extracted."))
    short_column: str | None = field(default=None, metadata=_help("paired: column with the short response."))
    response_column: str | None = field(default=None, metadata=_help("paired: one column whose text already starts with a control token."))
    num_examples: int = field(default=6000, metadata=_help("Questions to draw (miniworld) or examples to keep at most (other sources)."))
    short_share: float = field(default=0.5, metadata=_help("Share of short examples in the mix (0..1); the rest think."))
    max_completion_tokens: int | None = field(default=None, metadata=_help("Drop examples whose completion is longer."))
    require_correct: bool = field(default=False, metadata=_help("Keep only responses the grader marks correct (needs answer_column)."))
    reasoning_model: str | None = field(default=None, metadata=_help("generate: the long-answer teacher (hub id or folder)."))
    instruct_model: str | None = field(default=None, metadata=_help("generate: the short-answer teacher."))
    generation_batch_size: int = field(default=8, metadata=_help("generate: questions per teacher batch."))
    max_new_tokens_long: int = field(default=4096, metadata=_help("generate: token budget of the reasoning teacher."))
    max_new_tokens_short: int = field(default=1024, metadata=_help("generate: token budget of the instruction teacher."))
    short_instruction: str | None = field(default="Answer directly with the final answer only, no explanation.",
                                          metadata=_help("generate: appended to each question the instruction teacher "
                                                         "sees (the student's examples keep the bare question); null to ask it plainly."))
    generated_file: str | None = field(default=None, metadata=_help(
        "generate: JSONL the teachers append to (resumable). Default: <run>/warmup/teacher_responses.jsonl."))


@dataclass
class TrainerSection:
    """A stage section that is TRL's config class (``TRL_CONFIG``) plus thinkless_lite's own keys.

    TRL's fields live in ``trl``: the recipe's values over ``TRL_DEFAULTS``, the pipeline's picks for the
    mini recipe (names, types and documentation are TRL's), read as ``cfg.rl.trl["max_steps"]``; TRL's class
    itself is built from them when the stage starts (:func:`trl_arguments`). :meth:`updated` sets either kind,
    so callers need not know which class owns a key.
    """

    TRL_CONFIG: ClassVar[str] = ""
    TRL_DEFAULTS: ClassVar[dict] = {}
    # TRL fields the stage sets itself, each with why and what to set instead: a recipe that sets one is a
    # ConfigError at load (validate), not a value the stage would overwrite without a word.
    STAGE_SETS: ClassVar[dict] = {}
    EXTRA_KEYS: ClassVar[str] = "trl"  # parsing.from_dict collects the keys the section does not declare here
    trl: dict = field(default_factory=dict, metadata=_help("TRL config fields of this section (written beside its own keys)."))

    def __post_init__(self):
        self.trl = {**copy.deepcopy(self.TRL_DEFAULTS), **self.trl}

    def updated(self, **changes):
        """A copy with ``changes`` applied: the section's own keys as fields, any other as a TRL field."""
        own = {f.name for f in fields(self)} - {"trl"}
        trl = {**self.trl, **{k: v for k, v in changes.items() if k not in own}}
        return dataclasses.replace(self, trl=trl, **{k: v for k, v in changes.items() if k in own})


@dataclass
class WarmupConfig(TrainerSection):
    """Stage 1: TRL's ``SFTConfig`` plus ``data``."""

    TRL_CONFIG: ClassVar[str] = "SFTConfig"
    # Direct answers are a few tokens of each example, so the warm-up takes a high adapter lr and many steps.
    TRL_DEFAULTS: ClassVar[dict] = dict(
        max_steps=200, num_train_epochs=1.0, learning_rate=2e-3, per_device_train_batch_size=32,
        gradient_accumulation_steps=1, warmup_steps=0.05, lr_scheduler_type="cosine", logging_steps=10,
        save_steps=50, save_total_limit=2)
    STAGE_SETS: ClassVar[dict] = dict(
        completion_only_loss="the warm-up learns the answers only (the prompt tokens carry no loss)",
        max_length="set model.max_seq_length (the model's training length, the warm-up's included)",
        packing="each example is one prompt and its answer, never packed with others",
        gradient_checkpointing="set model.gradient_checkpointing (the model backend sets it up, once)")
    data: WarmupDataConfig = field(default_factory=WarmupDataConfig)


@dataclass
class RLDataConfig:
    source: str = field(default="miniworld", metadata=_help("miniworld, a hub dataset id, or a local json/jsonl/csv/parquet file."))
    split: str = field(default="train", metadata=_help("Hub split."))
    hub_config: str | None = field(default=None, metadata=_help("Hub dataset config name."))
    question_column: str = field(default="question", metadata=_help("Column with the question (DeepScaleR: problem)."))
    answer_column: str = field(default="answer", metadata=_help("Column with the gold answer."))
    gold_format: str = field(default="plain", metadata=_help("plain | gsm8k (gold after '####') | boxed (last \\boxed{})."))
    num_examples: int = field(default=4000, metadata=_help("Prompts to use at most."))


@dataclass
class RLConfig(TrainerSection, DeGRPOSettings):
    """Stage 2: TRL's ``GRPOConfig`` plus DeGRPO's own keys (:class:`DeGRPOSettings`, declared and checked there)
    and the stage's (``data``, ``reward``, ``prompts_per_step``)."""

    TRL_CONFIG: ClassVar[str] = "GRPOConfig"
    # scale_rewards none and temperature 0.6 are the release's; beta 0 skips the reference forward pass (with
    # beta > 0 the reference is a frozen copy of the adapter RL starts from, control rows included); report_to
    # takes TRL's loggers (tensorboard, wandb, trackio).
    TRL_DEFAULTS: ClassVar[dict] = dict(
        beta=0.0, epsilon=0.2, scale_rewards="none", num_generations=8, temperature=0.6, top_p=1.0,
        max_completion_length=144, max_steps=90, learning_rate=1e-4, gradient_accumulation_steps=1,
        logging_steps=1, save_steps=20, save_total_limit=2, report_to=[])
    STAGE_SETS: ClassVar[dict] = dict(
        loss_type="DeGRPO needs TRL's token-sum loss (dapo); rl.decoupled=false gives vanilla GRPO's token averaging",
        per_device_train_batch_size="set rl.prompts_per_step: every step's batch is whole groups "
                                    "(prompts_per_step x num_generations, split over processes and accumulation)",
        mask_truncated_completions="set rl.censor_truncated (true/false): censoring also takes cut-off answers out "
                                   "of the mode means, which TRL's flag alone does not",
        gradient_checkpointing="set model.gradient_checkpointing (the model backend sets it up, once)")
    data: RLDataConfig = field(default_factory=RLDataConfig)
    reward: RewardTable = field(default_factory=RewardTable)
    prompts_per_step: int = field(default=8, metadata=_help("Prompts per optimizer step (TRL's generation batch = this x num_generations)."))


@dataclass
class EvalConfig:
    benchmarks: list = field(default_factory=lambda: ["miniworld"], metadata=_help(
        "Benchmark names (miniworld, gsm8k, math500, minerva_algebra, aime2024, amc)."))
    modes: list = field(default_factory=lambda: ["auto", "think", "short"], metadata=_help("auto (model chooses), think, short (forced)."))
    data_file: str | None = field(default=None, metadata=_help("Local json/jsonl file instead of the hub (one benchmark)."))
    limit: int | None = field(default=None, metadata=_help("Questions per benchmark at most."))
    per_level: int = field(default=40, metadata=_help("miniworld: held-out questions per difficulty level."))
    temperature: float = field(default=0.0, metadata=_help("0 = greedy."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling."))
    num_samples: int = field(default=1, metadata=_help("Samples per question."))
    batch_size: int = field(default=160, metadata=_help("Questions per generate call."))
    max_new_tokens: int = field(default=144, metadata=_help("Token budget per answer."))
    tau: float | None = field(default=None, metadata=_help("Route to think when P(<think>) >= tau instead of sampling the control token."))
    sweep_tau: list = field(default_factory=lambda: [0.05, 0.2, 0.4, 0.6, 0.8, 0.95], metadata=_help(
        "Thresholds to sweep for the accuracy/tokens trade-off curve (forced short and tau=0 are added as the ends)."))


@dataclass
class DemoConfig:
    host: str = field(default="127.0.0.1", metadata=_help("Bind address (0.0.0.0 exposes it to your network)."))
    port: int = field(default=7860, metadata=_help("Port."))
    share: bool = field(default=False, metadata=_help("Create a public gradio.live link."))
    max_input_chars: int = field(default=2000, metadata=_help("Longer questions are refused with a message."))
    max_new_tokens: int = field(default=256, metadata=_help("Token budget per answer."))
    concurrency_limit: int = field(default=2, metadata=_help("Generations running at once; the rest queue."))
    examples: list = field(default_factory=lambda: ["3+4", "9*7", "2+5*3", "8-3*4+1", "7+3*2-5*9+1", "6*7-8+9*3-2*4+5"],
                           metadata=_help("Example questions, easy to hard."))


@dataclass
class RunConfig:
    name: str = field(default="mini", metadata=_help("Run name; outputs go to <output_dir>/<name>."))
    output_dir: str = field(default="runs", metadata=_help("Parent folder of run folders."))
    seed: int = field(default=0, metadata=_help("Seed for everything."))
    threads: int | None = field(default=2, metadata=_help("torch CPU threads (null: all cores)."))
    model: ModelConfig = field(default_factory=ModelConfig)
    miniworld: MiniWorldConfig = field(default_factory=MiniWorldConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------- recipes

def recipes_dir() -> Path:
    """Where the shipped recipes are: the package's ``recipes`` (the repository's ``configs/``)."""
    from importlib.resources import files

    return Path(str(files("thinkless_lite.recipes")))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe name (``mini``) or a YAML path -> the file; unknown names list the shipped ones."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if len(path.parts) == 1:  # a name: "mini", "mini.yaml", "r1_distill_1.5b_t4"
        name = path.name[:-len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
        shipped = recipes_dir() / f"{name}.yaml"
        if shipped.is_file():
            return shipped
    raise ConfigError(f"config {str(name_or_path)!r} is neither a YAML file nor a shipped recipe; recipes: "
                      f"{', '.join(recipe_names())} (e.g. --config mini), or give the path of your own YAML file")


# ---------------------------------------------------------------- loading and validation

def trl_arguments(section: TrainerSection, output_dir: str | Path, defaults: dict | None = None) -> dict:
    """Keyword arguments for TRL's config class of ``section`` (SFTConfig or GRPOConfig): the stage's
    ``defaults`` under the section's TRL fields, each checked against that class's own fields and types (a
    name it lacks is a ConfigError naming the closest match). Imports TRL: call it after the backend is
    chosen (``import unsloth`` first) and before a model loads, so a typo costs seconds."""
    import trl

    trl_class = getattr(trl, section.TRL_CONFIG)
    hints = typing.get_type_hints(trl_class)
    theirs = sorted(f.name for f in fields(trl_class) if f.init)
    where = "warmup." if section.TRL_CONFIG == "SFTConfig" else "rl."
    unknown = sorted(set(section.trl) - set(theirs))
    if unknown:
        ours = [f.name for f in fields(section) if f.name != "trl"]
        raise unknown_keys_error(unknown, ours, where, also=f"TRL's {section.TRL_CONFIG}", also_keys=theirs)
    checked = {name: typed(value, hints[name], f"{where}{name}", f"see TRL's {section.TRL_CONFIG}.{name}")
               for name, value in section.trl.items()}
    return {**(defaults or {}), **checked, "output_dir": str(output_dir)}


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict | None = None) -> RunConfig:
    """A recipe by name or path (None: the defaults, which are the ``mini`` recipe) with dotted overrides,
    then ``values``: a nested mapping of already typed settings (``{"model": {"adapter_path": path}}``),
    checked like the rest but never parsed as YAML, so a path with ``: `` or ``#`` in it stays as given."""
    data: dict = {}
    if name_or_path is not None:
        path = resolve_recipe(name_or_path)
        try:
            data = read_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML{_yaml_problem(err)}; fix the file (e.g. an unclosed "
                              "bracket or quote, or a tab used for indentation)") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections (model:, warmup:, rl:, eval:, ...); "
                              f"got a {type(data).__name__}")
    merged = merge(data, parse_overrides(overrides), RunConfig)
    cfg = from_dict(RunConfig, merge(merged, values or {}, RunConfig))
    validate(cfg)
    return cfg


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Where and what, on one line (PyYAML's own message spans several, with a snippet of the file)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return f"{where}: {problem}"


def censors_truncated(cfg: RunConfig) -> bool:
    """Whether RL censors answers cut off at its cap: ``rl.censor_truncated`` when set, else whether evaluation or
    the demo allows longer answers than training does (there a cut-off chain would have finished)."""
    if cfg.rl.censor_truncated is not None:
        return cfg.rl.censor_truncated
    cap = cfg.rl.trl.get("max_completion_length")
    return isinstance(cap, int) and cap < max(cfg.eval.max_new_tokens, cfg.demo.max_new_tokens)


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that types alone cannot express; DeGRPO's own are its settings' (``check_degrpo``)."""
    choices = {"model.backend": (cfg.model.backend, ("auto", "unsloth", "hf", "full")),
               "model.train_control_rows": (cfg.model.train_control_rows, ("new", "all")),
               "model.dtype": (cfg.model.dtype, ("auto", "float32", "bfloat16", "float16")),
               "warmup.data.source": (cfg.warmup.data.source, ("miniworld", "paired", "generate")),
               "rl.scale_rewards": (cfg.rl.trl.get("scale_rewards"), ("none", "group", "batch"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    if not 0.0 <= cfg.warmup.data.short_share <= 1.0:
        raise ConfigError(f"warmup.data.short_share must be within 0..1; got {cfg.warmup.data.short_share}")
    generations = cfg.rl.trl.get("num_generations")
    if not isinstance(generations, int) or isinstance(generations, bool) or generations < 2:
        raise ConfigError(f"rl.num_generations must be a whole number >= 2: group-relative advantages need a group; "
                          f"got {generations!r}")
    for prefix, section in (("warmup.", cfg.warmup), ("rl.", cfg.rl)):
        for key in sorted(set(section.trl) & set(section.STAGE_SETS)):
            raise ConfigError(f"{prefix}{key} is set by the stage, not by a recipe: {section.STAGE_SETS[key]}")
    cfg.rl.check_degrpo(generations, cfg.rl.trl.get("max_steps"), censoring=censors_truncated(cfg),
                        scale_rewards=cfg.rl.trl.get("scale_rewards"))
    _check_rl_temperature(cfg.rl.trl.get("temperature"))
    _check_counts(cfg)
    if cfg.demo.port > 65535:
        raise ConfigError(f"demo.port must be a TCP port, 1..65535; got {cfg.demo.port}")
    try:
        for mode in cfg.eval.modes:
            Routing(mode)
        for tau in [*cfg.eval.sweep_tau, *([cfg.eval.tau] if cfg.eval.tau is not None else [])]:
            Routing("auto", tau)
    except ValueError as err:
        raise ConfigError(f"eval: {err}") from err


def _check_rl_temperature(temperature) -> None:
    """RL compares sampled answers within a group: greedy decoding would make them all one answer."""
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature <= 0:
        raise ConfigError(f"rl.temperature must be > 0: RL samples its groups (e.g. rl.temperature=0.6); greedy "
                          f"decoding belongs to evaluation (eval.temperature=0); got {temperature}")


# Counts and the smallest value each takes; TRL's max_steps also takes -1 ("train num_train_epochs instead").
COUNTS = {"threads": 1, "model.lora_r": 1, "model.max_seq_length": 1, "warmup.max_steps": 1,
          "warmup.per_device_train_batch_size": 1, "warmup.gradient_accumulation_steps": 1,
          "warmup.data.num_examples": 1, "warmup.data.max_completion_tokens": 1,
          "warmup.data.generation_batch_size": 1, "warmup.data.max_new_tokens_long": 1,
          "warmup.data.max_new_tokens_short": 1, "rl.max_steps": 1, "rl.gradient_accumulation_steps": 1,
          "rl.max_completion_length": 1, "rl.prompts_per_step": 1, "rl.data.num_examples": 1, "eval.limit": 1,
          "eval.per_level": 1, "eval.num_samples": 1, "eval.batch_size": 1, "eval.max_new_tokens": 1,
          "demo.port": 1, "demo.max_input_chars": 1, "demo.max_new_tokens": 1, "demo.concurrency_limit": 1}
USE_EPOCHS = {"warmup.max_steps", "rl.max_steps"}


def _setting(cfg, key: str):
    """The value of a dotted key, None when unset (a TRL field the recipe leaves to TRL)."""
    node = cfg
    for part in key.split("."):
        node = node.trl.get(part) if isinstance(node, TrainerSection) and part in node.trl \
            else getattr(node, part, None)
    return node


def _check_counts(cfg: RunConfig) -> None:
    """Counts below their smallest value; a value of the wrong type is left to the type checks, which
    name the type."""
    for key, minimum in COUNTS.items():
        value = _setting(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value >= minimum:
            continue
        if key in USE_EPOCHS and value == -1:
            continue
        epochs = f", or -1 to train {key.split('.')[0]}.num_train_epochs instead" if key in USE_EPOCHS else ""
        raise ConfigError(f"{key} must be a whole number >= {minimum}{epochs}; got {value}")


# ---------------------------------------------------------------- files a stage reads

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _hub_id_shaped(name: str) -> bool:
    """Whether ``name`` can be a hub repository (``owner/name``, or a legacy ``name``) rather than only a path."""
    return bool(HUB_ID.fullmatch(name)) and "--" not in name and ".." not in name and not name.endswith(".gguf")


def adapter_folder_problem(path: str | Path, flag: str) -> str | None:
    """What keeps the folder ``path`` from being an adapter (None: nothing), for the user who gave it as ``flag``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return (f"no such adapter folder: {path}. Point {flag} at a trained stage's adapter, e.g. "
                "runs/quickstart/rl/adapter (or runs/<name>/warmup/adapter)")
    if (folder / "adapter_config.json").is_file():
        return None
    nested = [folder / stage / "adapter" for stage in ("rl", "warmup")
              if (folder / stage / "adapter" / "adapter_config.json").is_file()]
    hint = f" Did you mean {flag} {nested[0]}?" if nested else \
        " thinkless_lite saves adapters in runs/<name>/{warmup,rl}/adapter."
    return (f"{path} is not an adapter folder: it has no adapter_config.json (an adapter folder holds "
            f"adapter_config.json and the adapter's weights).{hint}")


def check_sources(model: ModelConfig) -> None:
    """The model's files are where the config says: an adapter path is an adapter folder, a model or tokenizer
    path exists (a name that can be a hub id is left to the loader). Stages call it as they start, before a
    model loads; ``validate`` does not, because a config can be right elsewhere (a run's resolved.yaml names
    paths as seen from where it ran)."""
    adapter = model.adapter_path
    if adapter and (Path(adapter).expanduser().exists() or not _hub_id_shaped(adapter)):
        if problem := adapter_folder_problem(adapter, "--adapter"):
            raise ConfigError(f"model.adapter_path: {problem}")
    for key in ("name_or_path", "tokenizer"):
        value = getattr(model, key)
        if value and not Path(value).expanduser().exists() and not _hub_id_shaped(value):
            raise ConfigError(f"model.{key}={value}: no such folder or file, and not a hub id (owner/name); give "
                              "a model folder, a .gguf file or a hub id")


def to_dict(cfg) -> dict:
    """The config as a recipe would write it: a trainer section's TRL fields beside its own keys."""
    out = {f.name: to_dict(value) if dataclasses.is_dataclass(value := getattr(cfg, f.name)) else copy.deepcopy(value)
           for f in fields(cfg)}
    if isinstance(cfg, TrainerSection):
        out.update(out.pop("trl"))
    return out


def save_resolved(cfg: RunConfig, folder: str | Path) -> Path:
    """Write the exact config a stage ran with next to its outputs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "resolved.yaml"
    target.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return target
