"""DeGRPO under Unsloth, proven on CPU against Unsloth's own code.

``import unsloth`` needs a CUDA GPU, but the part of Unsloth that decides what our loss becomes is pure
torch: unsloth_zoo's text path of ``grpo_accumulated_loss`` (move the prompts' left padding to the right,
rebuild the completion mask as ``ids != pad`` over a wider window) and its ``grpo_compute_loss`` /
``UnslothEfficientGRPO``. These tests take those functions from the installed, pinned unsloth_zoo wheel
(``make dev`` installs it with ``--no-deps``; it is read, never imported), run them on batches that our
own trainer produced (prompts of different lengths, a tokenizer that came without a pad token) and
check that loss and gradients equal :func:`thinkless_lite.degrpo_loss`.
"""

import ast
import json
import math
import re
import shutil
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from trl import GRPOTrainer

from conftest import degrpo_args, installed_file
from thinkless_lite.compat import ensure_reference_adapter, trainer_flavour, unsloth_layout, unsloth_loss_inputs
from thinkless_lite.config import ModelConfig
from thinkless_lite.losses import degrpo_loss, informative_groups
from thinkless_lite.model import load_model
from thinkless_lite.tokens import format_prompt
from thinkless_lite.vocabulary import ensure_distinct_pad_token
from thinkless_lite.trainers import DeGRPOMixin, DeGRPOTrainer, check_trainer_flavour

GROUP = 4
ZOO_NAMES = ("calculate_pad_tokens_in_prompt", "create_completion_attention_mask", "left_pack_padding",
             "align_logprobs_with_mask", "grpo_compute_loss", "UnslothEfficientGRPO")
QUESTIONS = ["1+2", "3*4-1", "9-9*3+1", "5+5*5-2+1"]  # different lengths: different left padding




@pytest.fixture(scope="module")
def zoo() -> types.SimpleNamespace:
    """The named functions of unsloth_zoo/rl_replacements.py, executed from the wheel's own source."""
    path = installed_file("unsloth_zoo", "rl_replacements.py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in ZOO_NAMES]
    assert sorted(n.name for n in nodes) == sorted(ZOO_NAMES), "unsloth_zoo renamed a function we prove against"
    for node in nodes:
        node.decorator_list = []  # torch.compile wrappers: same numbers, no compiler needed on CPU
    namespace = {"torch": torch, "math": math, "torch_compile_options": {}}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return types.SimpleNamespace(**{name: namespace[name] for name in ZOO_NAMES})


@pytest.fixture
def zoo_imports(monkeypatch):
    """UnslothEfficientGRPO imports its compile wrapper at call time; give it an identity one."""
    utils = types.ModuleType("unsloth_zoo.temporary_patches.utils")
    utils.torch_compile_with_fallback = lambda **kwargs: (lambda function: function)
    for name, module in [("unsloth_zoo", types.ModuleType("unsloth_zoo")),
                         ("unsloth_zoo.temporary_patches", types.ModuleType("unsloth_zoo.temporary_patches")),
                         ("unsloth_zoo.temporary_patches.utils", utils)]:
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture(scope="module")
def base_without_pad(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny random Qwen2 with its tokenizer's pad token removed, as many hub tokenizers come.

    Random weights on purpose: a trained model samples the same answer for every member of a group,
    and then the group-relative gradient cancels to float noise, which would prove nothing.
    """
    folder = tmp_path_factory.mktemp("tiny-no-pad")
    for item in tiny_model_dir.iterdir():
        shutil.copy(item, folder / item.name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def varied_rewards(completions, **kwargs):
    """One uniform group (dropped by DeGRPO) and varied others."""
    return [-1.0 if i < GROUP else [1.0, 0.5, -1.0, 0.5][(i // GROUP + i) % 4] for i in range(len(completions))]


def make_trainer(model_dir, tmp_path, *, decoupled=True, alpha=0.5, beta=0.0, adapter=None):
    from datasets import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(model_dir), backend="hf", lora_r=4, lora_alpha=8,
                                        train_control_rows="all", adapter_path=adapter), seed=0)
    torch.manual_seed(2)
    for name, param in loaded.model.named_parameters():  # a non-zero LoRA B: gradients reach every layer
        if "lora_B" in name:
            param.data.normal_(0.0, 0.02)
    prompts = [format_prompt(loaded.tokenizer, q) for q in QUESTIONS]
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    args = degrpo_args(output_dir=str(tmp_path), per_device_train_batch_size=len(prompts) * GROUP,
                       num_generations=GROUP, max_completion_length=96, loss_type="dapo", scale_rewards="none",
                       beta=beta, epsilon=0.2, use_cpu=True, report_to="none", seed=0, temperature=1.0,
                       shuffle_dataset=False, max_steps=1, bf16=False,  # fp32 on CPU, as thinkless_lite.stages.rl sets it
                       alpha=alpha, decoupled=decoupled)
    trainer = DeGRPOTrainer(model=loaded.model, reward_funcs=[varied_rewards], args=args, train_dataset=dataset,
                            processing_class=loaded.tokenizer, backend="hf")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    rows = [dataset[i] for i in range(len(dataset)) for _ in range(GROUP)]
    return trainer, trainer._generate_and_score_completions(rows)


def unsloth_text_loss(trainer, zoo, batch, *, efficient: bool) -> torch.Tensor:
    """Unsloth's loss on a micro-batch, text path, as unsloth 2026.10.9 computes it.

    ``compute_loss`` (unsloth/models/rl_replacements.py) hands the micro-batch to unsloth_zoo's
    ``grpo_accumulated_loss``, whose text branch is reproduced step by step with zoo's own helpers: count
    prompt pads, pick ``max_left_pad``, ``left_pack_padding``, keep the last ``T + max_left_pad`` columns,
    ``create_completion_attention_mask``, score the packed ids, then ``UnslothEfficientGRPO`` (or
    ``grpo_compute_loss``). What DeGRPOTrainer.compute_loss does first is the line under test.
    """
    pad = trainer.processing_class.pad_token_id
    inputs = unsloth_loss_inputs(batch, pad)  # DeGRPOTrainer.compute_loss, on Unsloth
    prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
    length = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    left_pads = zoo.calculate_pad_tokens_in_prompt(input_ids, length, pad)
    max_left_pad = int(left_pads.max())  # no old or reference log-probs: num_iterations=1, beta=0
    packed = zoo.left_pack_padding(input_ids, pad)
    window = packed[:, -(length + max_left_pad):]
    mask = zoo.create_completion_attention_mask(window, left_pads, max_left_pad, pad).to(torch.float32)
    logits = trainer.model(input_ids=packed, attention_mask=(packed != pad).long()).logits
    logits = logits[:, -(length + max_left_pad + 1):-1, :].float() / trainer.temperature
    new_logps = torch.gather(logits.log_softmax(-1), 2, window.unsqueeze(-1)).squeeze(-1)
    kwargs = dict(loss_type="dapo", epsilon_low=trainer.epsilon_low, epsilon_high=trainer.epsilon_high,
                  max_completion_length=trainer.args.max_completion_length, num_items_in_batch=inputs["num_items_in_batch"],
                  current_gradient_accumulation_steps=1, num_processes=1)
    if efficient:
        lm_head = trainer.model.get_output_embeddings().weight
        return zoo.UnslothEfficientGRPO.apply(new_logps, None, None, None, lm_head, window, mask, inputs["advantages"],
                                              trainer.beta, None, 1, kwargs, None)[0]
    return zoo.grpo_compute_loss(None, new_logps, None, None, window, mask, trainer.beta, inputs["advantages"],
                                 **kwargs)[0]


def reference_degrpo_loss(trainer, batch, *, alpha, decoupled) -> torch.Tensor:
    """``degrpo_loss`` on TRL's layout of the same batch, from the rewards (not from the trainer's weights)."""
    rewards = torch.tensor(varied_rewards(batch["completion_ids"]))
    keep = informative_groups(rewards, GROUP)
    advantages = rewards - rewards.view(-1, GROUP).mean(1).repeat_interleave(GROUP)
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention,
                                                              batch["completion_ids"].shape[1])
    mask = batch["completion_mask"].float() * (batch["completion_ids"] != trainer.processing_class.pad_token_id)
    return degrpo_loss(logps[keep], logps[keep].detach(), advantages[keep], mask[keep], alpha=alpha,
                       clip_eps=0.2, decoupled=decoupled)


@pytest.mark.parametrize("decoupled, efficient", [(True, True), (True, False), (False, True)])
def test_unsloths_loss_on_our_batches_equals_degrpo(zoo, zoo_imports, base_without_pad, tmp_path, decoupled, efficient):
    alpha = 0.5
    trainer, batch = make_trainer(base_without_pad, tmp_path, decoupled=decoupled, alpha=alpha)
    tokenizer = trainer.processing_class
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    lengths = batch["prompt_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1, "the batch must mix prompt lengths"
    ended = (batch["completion_ids"] == tokenizer.eos_token_id).any(1)
    assert 2 <= int(ended.sum()) < len(ended), "the batch must mix answers that end in EOS with cut-off ones"

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    theirs = unsloth_text_loss(trainer, zoo, batch, efficient=efficient)
    ours = reference_degrpo_loss(trainer, batch, alpha=alpha, decoupled=decoupled)
    assert torch.allclose(theirs, ours, atol=1e-6, rtol=1e-5), (theirs.item(), ours.item())
    grads_theirs = torch.autograd.grad(unsloth_text_loss(trainer, zoo, batch, efficient=efficient), params,
                                       allow_unused=True)
    grads_ours = torch.autograd.grad(reference_degrpo_loss(trainer, batch, alpha=alpha, decoupled=decoupled), params,
                                     allow_unused=True)
    pairs = [(a, b) for a, b in zip(grads_theirs, grads_ours) if not (a is None and b is None)]
    assert len(pairs) == len(params) and all(a is not None and b is not None for a, b in pairs)
    # Same math on different float paths (packed vs padded positions): equal to float32 noise, measured
    # against the size of the whole gradient (rows the model already predicts with p ~ 1 get ~1e-10).
    scale = max(b.abs().max() for _, b in pairs)
    for a, b in pairs:
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * scale), ((a - b).abs().max() / scale).item()
    compared = len(pairs)
    assert compared == len(params)


def test_our_relayout_equals_zoos_alignment(zoo):
    """unsloth_layout puts each TRL column where zoo's own helpers put that token, for any padding."""
    generator = torch.Generator().manual_seed(0)
    pad = 0
    for trial in range(20):
        batch, prompt_len, length = 6, 7, 5
        pads = torch.randint(0, prompt_len - 1, (batch,), generator=generator)
        prompt_ids = torch.randint(1, 50, (batch, prompt_len), generator=generator)
        prompt_ids[torch.arange(prompt_len)[None, :] < pads[:, None]] = pad
        completion_ids = torch.randint(1, 50, (batch, length), generator=generator)
        values = torch.randn(batch, length, generator=generator)
        input_ids = torch.cat([prompt_ids, completion_ids], 1)
        left = zoo.calculate_pad_tokens_in_prompt(input_ids, length, pad)
        max_left_pad = int(left.max()) + (trial % 3)  # also a window fixed wider by old/reference log-probs
        window = zoo.left_pack_padding(input_ids, pad)[:, -(length + max_left_pad):]
        zoo_mask = zoo.create_completion_attention_mask(window, left, max_left_pad, pad).long()
        expected = zoo.align_logprobs_with_mask(values, zoo_mask)
        got = unsloth_layout(values, prompt_ids, completion_ids, pad, width=length + max_left_pad)
        assert torch.equal(got, expected)
        ones = unsloth_layout(torch.ones_like(values), prompt_ids, completion_ids, pad, length + max_left_pad)
        assert torch.equal(ones, zoo_mask.float())
        assert torch.equal(window.gather(1, (max_left_pad - left)[:, None] + torch.arange(length)), completion_ids)


def test_pad_equal_to_eos_is_never_used():
    from thinkless_lite.mini_base import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    assert ensure_distinct_pad_token(tokenizer) == []  # <|endoftext|> is in the vocabulary: reused
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token
    tokenizer = build_tokenizer()
    size = len(tokenizer)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    tokenizer.pad_token = tokenizer.eos_token
    added = ensure_distinct_pad_token(tokenizer)  # no pad-like token left: one is added
    assert added == [size] and tokenizer.pad_token == "<|pad|>"


class UnslothGRPOTrainerStandIn(GRPOTrainer):
    """Unsloth's version of the hook, as far as the call goes: a seventh positional flag."""

    calls: list

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_efficient=False, *args, **kwargs):
        self.calls.append((batch_size, compute_entropy, compute_efficient))
        return (None, None) if compute_efficient else ("scored", None)


def test_unsloths_positional_call_reaches_unsloth(monkeypatch):
    from thinkless_lite import trainers as trainer_module

    monkeypatch.setattr(trainer_module, "fused_logprobs_available", lambda: True)  # as on a GPU
    trainer_class = type("DeGRPOOnUnsloth", (DeGRPOMixin, UnslothGRPOTrainerStandIn), {})
    assert trainer_flavour(trainer_class) == "unsloth"
    trainer = object.__new__(trainer_class)
    trainer.calls = []
    ids = torch.ones(2, 5, dtype=torch.long)
    # compute_loss in unsloth/models/rl_replacements.py: (model, input_ids, attention_mask, logits_to_keep,
    # batch_size, compute_entropy, compute_efficient), all positional.
    assert trainer._get_per_token_logps_and_entropies(None, ids, ids, 3, None, False, True) == (None, None)
    assert trainer._get_per_token_logps_and_entropies(None, ids, ids, 3, 4, True, False) == ("scored", None)
    assert trainer.calls == [(None, False, True), (4, True, False)]


def test_unsloth_still_calls_the_hook_positionally():
    """The premise of the test above, read from the pinned unsloth wheel: fails loudly if an upgrade moves it."""
    source = installed_file("unsloth", "models/rl_replacements.py").read_text(encoding="utf-8")
    call = re.compile(r"self\._get_per_token_logps_and_entropies\(\s*model,\s*input_ids,\s*attention_mask,\s*"
                      r"logits_to_keep,\s*batch_size,\s*compute_entropy,\s*compute_efficient,\s*\)")
    assert call.search(source)
    assert "if advantages.dim() == 1:" in installed_file("unsloth_zoo", "rl_replacements.py").read_text(encoding="utf-8")


def test_unsloth_drops_trls_reference_adapter_which_we_restore(tiny_model_dir):
    """Unsloth deletes TRL's ``ref`` adapter block (unsloth/models/rl.py); ensure_reference_adapter adds it back."""
    source = installed_file("unsloth", "models/rl.py").read_text(encoding="utf-8")
    assert "PEFT initialization logic removed via script" in source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8,
                                        train_control_rows="all"))
    model = loaded.model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".default") or ".default." in name:
                param.add_(0.1)  # a trained adapter, control rows included
    assert "ref" not in model.peft_config
    assert ensure_reference_adapter(model)
    params = dict(model.named_parameters())
    copied = [n for n in params if ".ref" in n]
    assert any("trainable_tokens_delta" in n for n in copied) and any("lora_A" in n for n in copied)
    for name in copied:
        twin = name.replace(".ref", ".default", 1)
        assert torch.equal(params[name], params[twin]) and not params[name].requires_grad
    assert model.active_adapter == "default"


def test_a_trainer_on_the_wrong_grpo_trainer_stops_at_once():
    with pytest.raises(RuntimeError, match="imported before unsloth"):
        check_trainer_flavour(DeGRPOTrainer, "unsloth")
    on_unsloth = type("DeGRPOOnUnsloth", (DeGRPOMixin, UnslothGRPOTrainerStandIn), {})
    with pytest.raises(RuntimeError, match="works only with Unsloth models"):
        check_trainer_flavour(on_unsloth, "hf")
    check_trainer_flavour(DeGRPOTrainer, "hf")
    check_trainer_flavour(on_unsloth, "unsloth")
