"""Typed run configuration: one YAML recipe -> nested dataclasses, with CLI overrides.

Unknown or mistyped keys are errors that name the key and list the allowed ones, because a typo in
a recipe should never silently fall back to a default during a two-hour Colab run.
Every run folder gets the fully resolved config (``resolved.yaml``) it ran with.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from thinkless_lite.data.miniworld import DEFAULT_DIFFICULTY_WEIGHTS
from thinkless_lite.tokens import ControlTokens


class ConfigError(ValueError):
    """A recipe or override that cannot be used as written; the message says how to fix it."""


@dataclass
class ModelConfig:
    name_or_path: str = field(default="thinkless-lite/mini-base", metadata={"help": "Hub id, local folder, or the embedded 'thinkless-lite/mini-base'."})
    backend: str = field(default="auto", metadata={"help": "auto | unsloth | hf | full. auto = unsloth on CUDA when it imports, else hf (bitsandbytes NF4 + PEFT LoRA)."})
    load_in_4bit: bool = field(default=True, metadata={"help": "Quantise the frozen base to NF4 (QLoRA). Ignored by backend=full."})
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16: compute dtype (auto: bf16 on GPUs that have it, fp16 on T4, fp32 on CPU)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                      metadata={"help": "Linear layers that get adapters."})
    max_seq_length: int = field(default=512, metadata={"help": "Longest prompt + completion in tokens (Unsloth needs it up front)."})
    adapter_path: str | None = field(default=None, metadata={"help": "Start from this LoRA adapter folder (e.g. the warm-up output)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory; turn on for 1.5B+ models on a T4."})
    train_control_rows: str = field(default="new", metadata={"help": "new: train only the control-token rows the base lacked; all: also rows it already had (use when its template writes <think> into the prompt, so that row was never predicted)."})
    short_token: str = field(default="<short>", metadata={"help": "Control token for a direct answer."})
    think_token: str = field(default="<think>", metadata={"help": "Control token that opens a chain of thought."})
    think_end_token: str = field(default="</think>", metadata={"help": "Closes the chain of thought."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message for every prompt."})
    chat_template: str | None = field(default=None, metadata={"help": "Override the tokenizer's chat template (Jinja)."})

    @property
    def control_tokens(self) -> ControlTokens:
        return ControlTokens(self.short_token, self.think_token, self.think_end_token)


@dataclass
class MiniWorldConfig:
    task: str = field(default="chain", metadata={"help": "chain (single-digit operations mod 10, the shipped base's world) | addition (two k-digit numbers, for real pretrained models)."})
    difficulty_weights: dict = field(default_factory=lambda: dict(DEFAULT_DIFFICULTY_WEIGHTS),
                                     metadata={"help": "Operations k -> sampling weight. The default leans easy, like GSM8K."})
    test_fraction: float = field(default=0.2, metadata={"help": "Share of expressions (by hash) held out for testing."})
    seed: int = field(default=0, metadata={"help": "Seed of the task sampler."})


@dataclass
class WarmupDataConfig:
    source: str = field(default="miniworld", metadata={"help": "miniworld | paired | generate."})
    path: str | None = field(default=None, metadata={"help": "paired/generate: hub dataset id or local json/jsonl/csv/parquet file."})
    split: str = field(default="train", metadata={"help": "Hub split."})
    hub_config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    question_column: str = field(default="question", metadata={"help": "Column with the question."})
    answer_column: str | None = field(default="answer", metadata={"help": "Column with the gold answer (needed by the correctness filter)."})
    long_column: str | None = field(default=None, metadata={"help": "paired: column with the long (reasoning) response."})
    short_column: str | None = field(default=None, metadata={"help": "paired: column with the short response."})
    response_column: str | None = field(default=None, metadata={"help": "paired: one column whose text already starts with a control token."})
    num_examples: int = field(default=4000, metadata={"help": "Questions to draw (miniworld) or to keep at most (other sources)."})
    short_share: float = field(default=0.5, metadata={"help": "Share of short examples in the mix (0..1); the rest think."})
    max_completion_tokens: int | None = field(default=None, metadata={"help": "Drop examples whose completion is longer."})
    require_correct: bool = field(default=False, metadata={"help": "Keep only responses the grader marks correct (needs answer_column)."})
    reasoning_model: str | None = field(default=None, metadata={"help": "generate: the long-answer teacher (hub id or folder)."})
    instruct_model: str | None = field(default=None, metadata={"help": "generate: the short-answer teacher."})
    generation_batch_size: int = field(default=8, metadata={"help": "generate: questions per teacher batch."})
    max_new_tokens_long: int = field(default=4096, metadata={"help": "generate: token budget of the reasoning teacher."})
    max_new_tokens_short: int = field(default=1024, metadata={"help": "generate: token budget of the instruction teacher."})
    short_instruction: str | None = field(default="Answer directly with the final answer only, no explanation.",
                                          metadata={"help": "generate: appended to each question the instruction teacher sees (the student's examples keep the bare question); null to ask it plainly."})
    generated_file: str | None = field(default=None, metadata={"help": "generate: JSONL the teachers append to (resumable). Default: <run>/warmup/teacher_responses.jsonl."})


@dataclass
class WarmupConfig:
    data: WarmupDataConfig = field(default_factory=WarmupDataConfig)
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps (-1: use num_train_epochs)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs when max_steps is -1."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate of the adapter."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Sequences per device step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps accumulated per update."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps with a linear LR warm-up."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Transformers scheduler name."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N steps (resume restarts from the last one)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    trainer_overrides: dict = field(default_factory=dict, metadata={"help": "Extra TRL SFTConfig arguments, passed through as given."})


@dataclass
class RewardConfig:
    short_correct: float = field(default=1.0, metadata={"help": "Reward of a correct direct answer."})
    think_correct: float = field(default=0.5, metadata={"help": "Reward of a correct reasoned answer."})
    short_wrong: float = field(default=-1.0, metadata={"help": "Reward of a wrong direct answer."})
    think_wrong: float = field(default=-1.0, metadata={"help": "Reward of a wrong reasoned answer."})
    format_error: float = field(default=-1.0, metadata={"help": "No control token, unclosed reasoning or no parsable answer."})


@dataclass
class RLDataConfig:
    source: str = field(default="miniworld", metadata={"help": "miniworld, a hub dataset id, or a local json/jsonl/csv/parquet file."})
    split: str = field(default="train", metadata={"help": "Hub split."})
    hub_config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    question_column: str = field(default="question", metadata={"help": "Column with the question (DeepScaleR: problem)."})
    answer_column: str = field(default="answer", metadata={"help": "Column with the gold answer."})
    gold_format: str = field(default="plain", metadata={"help": "plain | gsm8k (gold after '####') | boxed (last \\boxed{})."})
    num_examples: int = field(default=2000, metadata={"help": "Prompts to use at most."})


@dataclass
class RLConfig:
    data: RLDataConfig = field(default_factory=RLDataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    decoupled: bool = field(default=True, metadata={"help": "DeGRPO (True) or vanilla GRPO token averaging (False)."})
    alpha: float = field(default=0.001, metadata={"help": "Weight of the control-token term. Scale it with 1/completion length: the paper's 0.001 suits ~1-4k-token answers."})
    clip_eps: float = field(default=0.2, metadata={"help": "PPO clip range."})
    beta: float = field(default=0.001, metadata={"help": "KL weight to the reference: a frozen copy of the adapter RL starts from (the warm-up), control rows included (0 disables it and saves a forward pass)."})
    scale_rewards: bool = field(default=False, metadata={"help": "Divide advantages by the group std (released: off)."})
    drop_uniform_groups: bool = field(default=True, metadata={"help": "Drop groups whose rewards are all equal (no signal)."})
    num_generations: int = field(default=8, metadata={"help": "Samples per prompt (the group)."})
    prompts_per_step: int = field(default=8, metadata={"help": "Prompts per optimizer step."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_completion_length: int = field(default=160, metadata={"help": "Token budget per completion."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adapter learning rate."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per update."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=25, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    report_to: list = field(default_factory=list, metadata={"help": "TRL/transformers loggers: tensorboard, wandb, trackio."})
    trainer_overrides: dict = field(default_factory=dict, metadata={"help": "Extra TRL GRPOConfig arguments, passed through as given."})


@dataclass
class EvalConfig:
    benchmarks: list = field(default_factory=lambda: ["miniworld"], metadata={"help": "Benchmark names (miniworld, gsm8k, math500, minerva_algebra, aime2024, amc)."})
    modes: list = field(default_factory=lambda: ["auto", "think", "short"], metadata={"help": "auto (model chooses), think, short (forced)."})
    data_file: str | None = field(default=None, metadata={"help": "Local json/jsonl file instead of the hub (one benchmark)."})
    limit: int | None = field(default=None, metadata={"help": "Questions per benchmark at most."})
    per_level: int = field(default=50, metadata={"help": "miniworld: held-out questions per difficulty level."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    num_samples: int = field(default=1, metadata={"help": "Samples per question."})
    batch_size: int = field(default=64, metadata={"help": "Questions per generate call."})
    max_new_tokens: int = field(default=160, metadata={"help": "Token budget per answer."})
    tau: float | None = field(default=None, metadata={"help": "Route to think when P(<think>) >= tau instead of sampling the control token."})
    sweep_tau: list = field(default_factory=list, metadata={"help": "Thresholds to sweep for the accuracy/tokens trade-off curve."})


@dataclass
class DemoConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "Bind address (0.0.0.0 exposes it to your network)."})
    port: int = field(default=7860, metadata={"help": "Port."})
    share: bool = field(default=False, metadata={"help": "Create a public gradio.live link."})
    max_input_chars: int = field(default=2000, metadata={"help": "Longer questions are refused with a message."})
    max_new_tokens: int = field(default=256, metadata={"help": "Token budget per answer."})
    concurrency_limit: int = field(default=2, metadata={"help": "Generations running at once; the rest queue."})
    examples: list = field(default_factory=lambda: ["3+4", "9*7", "2+5*3", "8-3*4+1", "7+3*2-5*9+1", "6*7-8+9*3-2*4+5"],
                           metadata={"help": "Example questions, easy to hard."})


@dataclass
class RunConfig:
    name: str = field(default="mini", metadata={"help": "Run name; outputs go to <output_dir>/<name>."})
    output_dir: str = field(default="runs", metadata={"help": "Parent folder of run folders."})
    seed: int = field(default=0, metadata={"help": "Seed for everything."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: all cores)."})
    model: ModelConfig = field(default_factory=ModelConfig)
    miniworld: MiniWorldConfig = field(default_factory=MiniWorldConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------- loading and validation

def _type_ok(value: Any, annotation: Any) -> bool:
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | {"ControlTokens": ControlTokens})  # noqa: S307 - our own annotations
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool, list, dict):
        return isinstance(value, annotation)
    return True


def _coerce_float(value: Any, annotation: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; for a float setting, take it as the number it is."""
    accepts_float = annotation is float or float in typing.get_args(annotation)
    if accepts_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    by_name = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(by_name))
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(where + k) for k in unknown)}; "
                          f"allowed keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(sorted(by_name))}")
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = from_dict(annotation, value, f"{where}{name}.")
        else:
            value = _coerce_float(value, annotation)
            if not _type_ok(value, annotation):
                raise ConfigError(f"{where}{name}: expected {getattr(annotation, '__name__', annotation)}, "
                                  f"got {value!r} ({type(value).__name__}); help: {by_name[name].metadata.get('help', '')}")
            kwargs[name] = float(value) if annotation is float else value
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["rl.alpha=0.01", "model.backend=hf"]`` -> nested dict; values are parsed as YAML scalars."""
    data: dict = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. rl.alpha=0.01")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return data


def _merge(base: dict, extra: dict, cls=None) -> dict:
    """Overrides win; sections merge key by key, but a dict-valued setting is replaced whole."""
    hints = typing.get_type_hints(cls) if cls is not None else {}
    out = dict(base)
    for key, value in extra.items():
        section = hints.get(key)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and dataclasses.is_dataclass(section):
            out[key] = _merge(out[key], value, section)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; recipes live in configs/, e.g. configs/mini.yaml")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    data = _merge(data, parse_overrides(overrides), RunConfig)
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    if cfg.model.backend not in ("auto", "unsloth", "hf", "full"):
        raise ConfigError(f"model.backend must be auto, unsloth, hf or full; got {cfg.model.backend!r}")
    if cfg.model.train_control_rows not in ("new", "all"):
        raise ConfigError(f"model.train_control_rows must be new or all; got {cfg.model.train_control_rows!r}")
    if cfg.model.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype must be auto, float32, bfloat16 or float16; got {cfg.model.dtype!r}")
    if cfg.warmup.data.source not in ("miniworld", "paired", "generate"):
        raise ConfigError(f"warmup.data.source must be miniworld, paired or generate; got {cfg.warmup.data.source!r}")
    if not 0.0 <= cfg.warmup.data.short_share <= 1.0:
        raise ConfigError(f"warmup.data.short_share must be within 0..1; got {cfg.warmup.data.short_share}")
    if cfg.rl.num_generations < 2:
        raise ConfigError("rl.num_generations must be >= 2: group-relative advantages need a group")
    for mode in cfg.eval.modes:
        if mode not in ("auto", "think", "short"):
            raise ConfigError(f"eval.modes entries must be auto, think or short; got {mode!r}")
    for tau in list(cfg.eval.sweep_tau) + ([cfg.eval.tau] if cfg.eval.tau is not None else []):
        if not 0.0 <= float(tau) <= 1.0:
            raise ConfigError(f"tau must be within 0..1; got {tau}")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_resolved(cfg: RunConfig, folder: str | Path) -> Path:
    """Write the exact config a stage ran with next to its outputs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "resolved.yaml"
    target.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return target
