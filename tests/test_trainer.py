"""DeGRPOTrainer: the loss TRL computes with our per-token advantages equals degrpo_loss exactly."""

import inspect
import warnings

import pytest
import torch

from conftest import degrpo_args
from thinkless_lite.config import ModelConfig
from thinkless_lite.losses import degrpo_loss, informative_groups
from thinkless_lite.model import load_model
from thinkless_lite.tokens import format_prompt

GROUP = 4


# Every GRPOTrainer method DeGRPOMixin overrides, with the leading parameters it relies on.
GRPO_HOOKS = {
    "_generate_and_score_completions": ["inputs"],
    "_calculate_rewards": ["inputs", "prompts", "completions", "completion_ids_list"],
    "_get_per_token_logps_and_entropies": ["model", "input_ids", "attention_mask", "logits_to_keep", "batch_size",
                                           "compute_entropy"],
    "_generate_single_turn": ["prompt_ids", "images", "multimodal_fields", "num_generations"],
    "compute_loss": ["model", "inputs", "return_outputs", "num_items_in_batch"],
    "create_optimizer": [],
    "log": ["logs", "start_time"],
}


def test_trl_is_the_pinned_version_and_the_hooks_we_use_exist():
    """We lean on GRPOTrainer internals: fail loudly when an upgrade moves them."""
    import trl
    from trl import GRPOTrainer

    assert trl.__version__ == "1.15.0", "re-check DeGRPOTrainer's hooks before bumping TRL"
    for hook, params in GRPO_HOOKS.items():
        signature = inspect.signature(getattr(GRPOTrainer, hook))
        assert list(signature.parameters)[1:1 + len(params)] == params, hook
    source = inspect.getsource(GRPOTrainer._compute_loss)
    assert "advantages.dim() == 1" in source, "TRL no longer accepts (B, T) advantages"
    assert 'inputs["num_items_in_batch"]' in source, "dapo normaliser changed"
    # Forced modes: prompts reach _generate_single_turn as token-id lists, and it returns (completion ids, logprobs).
    assert "self._generate_single_turn(\n                prompt_ids, images, multimodal_fields, num_generations" in \
        inspect.getsource(GRPOTrainer._generate)


def test_every_trl_method_the_trainers_override_is_pinned():
    """A new override of a TRL method joins GRPO_HOOKS (and so the signature check above), or this fails."""
    from transformers import Trainer
    from trl import GRPOTrainer

    from thinkless_lite.trainers import DeGRPOMixin, PortableSFTTrainer

    overridden = {name for name, value in vars(DeGRPOMixin).items()
                  if callable(value) and name != "__init__" and hasattr(GRPOTrainer, name)}
    assert overridden == set(GRPO_HOOKS)
    sft = {name for name, value in vars(PortableSFTTrainer).items() if callable(value) and name != "__init__"}
    assert sft == {"compute_loss"}
    assert list(inspect.signature(Trainer.compute_loss).parameters)[1:] == GRPO_HOOKS["compute_loss"]


def assert_same_gradients(got, expected) -> None:
    """Tensor by tensor, control-token rows included; a tensor without a gradient must lack it on both sides."""
    for a, b in zip(got, expected):
        if a is None or b is None:
            assert a is None and b is None
        else:
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def fixed_rewards(completions, **kwargs):
    """Deterministic rewards with one uniform group (dropped) and varied others."""
    out = []
    for i in range(len(completions)):
        group, member = divmod(i, GROUP)
        out.append(-1.0 if group == 0 else [1.0, 0.5, -1.0, 0.5][(member + group) % 4])
    return out


def make_trainer(tiny_model_dir, tmp_path, *, decoupled, alpha, grpo_args=(), questions=("1+2", "3*4-1", "9-9", "5+5*5"),
                 **degrpo):
    from datasets import Dataset

    from thinkless_lite.trainers import DeGRPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8))
    prompts = [format_prompt(loaded.tokenizer, q) for q in questions]
    dataset = Dataset.from_list([{"prompt": p, "answer": "0"} for p in prompts])
    args = degrpo_args(**{**dict(output_dir=str(tmp_path), per_device_train_batch_size=len(prompts) * GROUP,
                                 num_generations=GROUP, max_completion_length=12, loss_type="dapo",
                                 scale_rewards="none", beta=0.0, epsilon=0.2, use_cpu=True, report_to="none", seed=0,
                                 temperature=1.0, shuffle_dataset=False, max_steps=1, logging_steps=1, alpha=alpha,
                                 decoupled=decoupled), **degrpo, **dict(grpo_args)})
    trainer = DeGRPOTrainer(model=loaded.model, reward_funcs=[fixed_rewards], args=args, train_dataset=dataset,
                            processing_class=loaded.tokenizer)
    return trainer, dataset


@pytest.mark.parametrize("decoupled, alpha, cpu", [(True, 0.001, "any"), (True, 0.5, "any"), (False, 0.001, "any"),
                                                 (True, 0.001, "avx512bf16")])
def test_trainer_loss_equals_degrpo_loss(tiny_model_dir, tmp_path, request, decoupled, alpha, cpu):
    """Also on a CPU where bitsandbytes repacks 4-bit weights during the (eval-mode) generation."""
    if cpu == "avx512bf16":
        request.getfixturevalue("avx512bf16_cpu")
    torch.manual_seed(0)
    trainer, dataset = make_trainer(tiny_model_dir, tmp_path, decoupled=decoupled, alpha=alpha)
    rows = [dataset[i] for i in range(len(dataset)) for _ in range(GROUP)]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() in a real run
    batch = trainer._generate_and_score_completions(rows)
    assert batch["advantages"].shape == batch["completion_mask"].shape  # per-token advantages reach the loss
    loss = trainer.compute_loss(trainer.model, batch)

    rewards = torch.tensor(fixed_rewards(rows))
    keep = informative_groups(rewards, GROUP)
    assert keep.tolist()[:GROUP] == [False] * GROUP and all(keep.tolist()[GROUP:])
    advantages = rewards - rewards.view(-1, GROUP).mean(1).repeat_interleave(GROUP)
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention,
                                                              batch["completion_ids"].shape[1])
    mask = batch["completion_mask"].float()
    expected = degrpo_loss(logps[keep], logps[keep].detach(), advantages[keep], mask[keep], alpha=alpha,
                           clip_eps=0.2, decoupled=decoupled)
    assert torch.allclose(loss, expected, atol=1e-6), (loss.item(), expected.item())

    # And the gradients agree too, control-token rows included.
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    grads_trainer = torch.autograd.grad(trainer.compute_loss(trainer.model, batch), params, allow_unused=True)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention,
                                                              batch["completion_ids"].shape[1])
    expected = degrpo_loss(logps[keep], logps[keep].detach(), advantages[keep], mask[keep], alpha=alpha,
                           decoupled=decoupled)
    grads_expected = torch.autograd.grad(expected, params, allow_unused=True)
    assert_same_gradients(grads_trainer, grads_expected)


def test_control_rows_take_their_own_learning_rate_through_the_schedule(tiny_model_dir, tmp_path):
    trainer, _ = make_trainer(tiny_model_dir, tmp_path, decoupled=True, alpha=0.001, control_rows_lr_scale=10.0,
                              grpo_args={"learning_rate": 1e-4, "lr_scheduler_type": "linear", "warmup_steps": 0})
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    rows = {id(p) for n, p in trainer.model.named_parameters() if "trainable_tokens_delta" in n and p.requires_grad}
    groups = trainer.optimizer.param_groups
    row_groups = [g for g in groups if {id(p) for p in g["params"]} <= rows]
    assert rows and {id(p) for g in row_groups for p in g["params"]} == rows  # every row, and nothing else
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in trainer.model.parameters()
                                                             if p.requires_grad}  # nothing lost or doubled
    assert all(g["lr"] == pytest.approx(1e-3) for g in row_groups)
    assert all(g["lr"] == pytest.approx(1e-4) for g in groups if g not in row_groups)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    for group in trainer.optimizer.param_groups:  # linear decay, 3/4 left after one of 4 steps; the ratio kept
        assert group["lr"] == pytest.approx(7.5e-4 if group in row_groups else 7.5e-5)
    with pytest.raises(ValueError, match="control_rows_lr_scale must be > 0"):
        make_trainer(tiny_model_dir, tmp_path, decoupled=True, alpha=0.001, control_rows_lr_scale=0.0)


def test_trainer_requires_token_sum_loss_and_its_settings_in_args(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig

    from thinkless_lite.trainers import DeGRPOTrainer

    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, use_cpu=True,
                  report_to="none", max_completion_length=4)
    with pytest.raises(ValueError, match="loss_type='dapo'"):
        degrpo_args(**common, loss_type="grpo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8))
    with pytest.raises(TypeError, match="DeGRPOConfig"):  # a plain GRPOConfig has no DeGRPO settings to read
        DeGRPOTrainer(model=loaded.model, reward_funcs=[fixed_rewards], args=GRPOConfig(**common, loss_type="dapo"),
                      train_dataset=Dataset.from_list([{"prompt": "x", "answer": "1"}]),
                      processing_class=loaded.tokenizer)


def test_the_kl_reference_is_the_starting_adapter_control_rows_included(tiny_model_dir, tmp_path):
    """beta > 0, RL from a (warm-up) adapter: the reference TRL scores with is that adapter, not the base."""
    from datasets import Dataset

    from thinkless_lite.model import save_adapter
    from thinkless_lite.trainers import DeGRPOTrainer

    config = ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8, train_control_rows="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = load_model(config)
        with torch.no_grad():  # a trained warm-up: LoRA and control rows away from the base
            for name, param in warm.model.named_parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param) * 0.05)
        adapter = save_adapter(warm, tmp_path / "warmup")
        loaded = load_model(ModelConfig(**{**config.__dict__, "adapter_path": str(adapter)}))
    prompts = [format_prompt(loaded.tokenizer, q) for q in ["1+2", "3*4-1"]]
    dataset = Dataset.from_list([{"prompt": p, "answer": "0"} for p in prompts])
    args = degrpo_args(output_dir=str(tmp_path / "rl"), per_device_train_batch_size=2 * GROUP, num_generations=GROUP,
                       max_completion_length=8, loss_type="dapo", scale_rewards="none", beta=0.04, use_cpu=True,
                       bf16=False, report_to="none", seed=0, shuffle_dataset=False, max_steps=1)
    trainer = DeGRPOTrainer(model=loaded.model, reward_funcs=[fixed_rewards], args=args, train_dataset=dataset,
                            processing_class=loaded.tokenizer, backend="hf")
    model = trainer.model
    params = dict(model.named_parameters())
    deltas = [n for n in params if "trainable_tokens_delta.ref" in n]
    assert deltas and all(torch.equal(params[n], params[n.replace(".ref", ".default")]) for n in deltas)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer._generate_and_score_completions([dataset[i] for i in range(2) for _ in range(GROUP)])
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    width = batch["completion_ids"].shape[1]
    with torch.no_grad():
        policy, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, attention, width)
        with model.disable_adapter():
            base, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, attention, width)
    mask = batch["completion_mask"].bool()
    assert torch.allclose(batch["ref_per_token_logps"][mask], policy[mask], atol=1e-5)
    assert not torch.allclose(base[mask], policy[mask], atol=1e-3)
    saved = save_adapter(loaded, tmp_path / "rl-adapter")
    assert not (saved / "ref").exists() and (saved / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("greedy", [True, False])
def test_forced_samples_take_their_mode_and_the_loss_equals_degrpo_with_mode_advantages(tiny_model_dir, tmp_path,
                                                                                         greedy):
    """mode_balance=0.5: in each group of 4 one answer is forced to <think> and one to <short>; the trainer's loss
    and gradients equal degrpo_loss with the exact two-mode control advantages and within-mode response ones,
    each mode valued by its forced answer with greedy_forced_answers (by all its answers without)."""
    from thinkless_lite.losses import SHORT_MODE, THINK_MODE, mode_advantages

    torch.manual_seed(0)
    trainer, dataset = make_trainer(tiny_model_dir, tmp_path, decoupled=True, alpha=0.5, mode_balance=0.5,
                                    within_mode_advantages=True, greedy_forced_answers=greedy)
    rows = [dataset[i] for i in range(len(dataset)) for _ in range(GROUP)]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    embeddings = trainer.model.get_input_embeddings().token_adapter
    base_rows = embeddings.base_layer.weight.detach().clone()
    with torch.no_grad():  # trained rows away from the base's, so a fold left behind would show
        for delta in embeddings.trainable_tokens_delta.values():
            delta.add_(1.0)
    batch = trainer._generate_and_score_completions(rows)
    # The rows were folded into the table while generating, and taken out again.
    assert not any(layer.merged for layer in trainer.model.modules() if type(layer).__name__ == "TrainableTokensLayer")
    assert torch.equal(embeddings.base_layer.weight, base_rows)
    first = batch["completion_ids"][:, 0].view(-1, GROUP)
    think_id, short_id = trainer.mode_ids[THINK_MODE], trainer.mode_ids[SHORT_MODE]
    assert (first[:, 0] == think_id).all() and (first[:, 1] == short_id).all()

    rewards = torch.tensor(fixed_rewards(rows))
    keep = informative_groups(rewards, GROUP)
    modes = torch.full((len(rows),), -1)
    modes[batch["completion_ids"][:, 0] == short_id] = SHORT_MODE
    modes[batch["completion_ids"][:, 0] == think_id] = THINK_MODE
    with torch.no_grad():  # P(<short>), P(<think>) after each prompt, from a forward of our own
        trainer.model.eval()
        logits = trainer.model(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"]).logits[:, -1]
        trainer.model.train()
        probs = torch.softmax(logits / trainer.temperature, dim=-1)
    forced = torch.tensor([True, True] + [False] * (GROUP - 2)).repeat(len(dataset))
    control, response = mode_advantages(rewards, modes, probs[:, short_id], probs[:, think_id], GROUP,
                                        within_mode=True, valued=forced if greedy else None)
    advantages = response[:, None].expand_as(batch["completion_mask"]).clone()
    advantages[:, 0] = control
    plain = rewards - rewards.view(-1, GROUP).mean(1).repeat_interleave(GROUP)
    assert not torch.allclose(control[keep], plain[keep], atol=1e-3)  # the correction matters on this batch
    if greedy:  # and valuing each mode by its forced answer does too
        every_answer, _ = mode_advantages(rewards, modes, probs[:, short_id], probs[:, think_id], GROUP,
                                          within_mode=True)
        assert not torch.allclose(control[keep], every_answer[keep], atol=1e-3)

    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer.compute_loss(trainer.model, batch)
    grads_trainer = torch.autograd.grad(loss, params, allow_unused=True)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention,
                                                              batch["completion_ids"].shape[1])
    mask = batch["completion_mask"].float()
    expected = degrpo_loss(logps[keep], logps[keep].detach(), advantages[keep], mask[keep], alpha=0.5, clip_eps=0.2)
    assert torch.allclose(loss, expected, atol=1e-6), (loss.item(), expected.item())
    grads_expected = torch.autograd.grad(expected, params, allow_unused=True)
    assert_same_gradients(grads_trainer, grads_expected)


def test_greedy_rows_decode_greedily_inside_a_sampled_batch(tiny_model_dir):
    """The forced answers' decoding (greedy_forced_answers): in one sampled generate call, the rows marked greedy
    come out as greedy decoding gives them, the others stay sampled, and generate is the model's own again after."""
    from thinkless_lite.trainers import greedy_rows

    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8))
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    inputs = tokenizer([format_prompt(tokenizer, "12+34")] * 6, return_tensors="pt")
    settings = dict(max_new_tokens=16, pad_token_id=tokenizer.pad_token_id)
    greedy = model.generate(**inputs, do_sample=False, **settings)[0]
    rows = [True, False, True, False, False, True]
    with greedy_rows(model, rows):
        mixed = model.generate(**inputs, do_sample=True, temperature=2.0, **settings)

    def answer(ids):
        return [t for t in ids.tolist() if t != tokenizer.pad_token_id]

    assert all(answer(row) == answer(greedy) for row, marked in zip(mixed, rows) if marked)
    assert any(answer(row) != answer(greedy) for row, marked in zip(mixed, rows) if not marked)
    assert "generate" not in model.__dict__


def test_length_grouped_micro_batches_give_the_padded_loss_and_gradients(tiny_model_dir, tmp_path):
    """A batch of short and long answers (one fully masked): scored in micro-batches of similar length, each cut
    after its last real column, the loss and every gradient equal those of TRL's one padded rectangle."""
    from thinkless_lite.microbatching import length_groups, needed_widths

    torch.manual_seed(0)
    # fp32, as on a CPU run (precision_flags): under bf16 autocast any change of batch shape moves the last bits
    trainer, dataset = make_trainer(tiny_model_dir, tmp_path, decoupled=True, alpha=0.5, grpo_args={"bf16": False})
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer._generate_and_score_completions([dataset[i] for i in range(len(dataset)) for _ in range(GROUP)])
    rows, width = batch["completion_ids"].shape
    lengths = torch.tensor([1, 12, 3, 0, 12, 2, 7, 1, 11, 4, 12, 1, 2, 9, 3, 12][:rows])  # short and long mixed
    mask = (torch.arange(width)[None, :] < lengths[:, None]).int()
    batch["completion_mask"] = mask
    batch["completion_ids"] = batch["completion_ids"].masked_fill(mask == 0, trainer.processing_class.pad_token_id)
    batch["advantages"] = torch.randn(rows, width) * mask  # per-token weights, as DeGRPO hands them
    batch["num_items_in_batch"] = mask.sum()
    trainer.micro_batch_overhead_tokens = 8  # answers of at most 12 tokens: splits that save a few columns pay
    attention = torch.cat([batch["prompt_mask"], mask], dim=1)
    groups = length_groups(needed_widths(attention, batch["prompt_ids"].shape[1] + 1), overhead=8)
    assert 1 < len(groups) < rows  # really regrouped and cut, not one rectangle nor one row at a time

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    results = {}
    for grouped in (False, True):
        trainer.length_grouped_batches = grouped
        loss = trainer.compute_loss(trainer.model, batch)
        results[grouped] = loss, torch.autograd.grad(loss, params, allow_unused=True)
    (padded, padded_grads), (grouped, grouped_grads) = results[False], results[True]
    assert padded.abs() > 1e-3
    assert torch.allclose(grouped, padded, atol=1e-6, rtol=1e-5), (grouped.item(), padded.item())
    assert_same_gradients(grouped_grads, padded_grads)


def test_the_threshold_holds_the_batchs_mean_log_odds_and_p_think_means_what_evaluation_reads(tiny_model_dir,
                                                                                              tmp_path):
    """One real step with the recipe's rule: after the optimizer step the batch's mean log-odds sit exactly on the
    threshold's target (where they were plus ``mode_threshold_lr`` x the threshold step), whatever
    the ranking's step did to them; the control advantages are the centred ones over the groups the loss keeps;
    the logged P(<think>) is evaluation's (``generation.decide``: two control tokens, temperature 1)."""
    from thinkless_lite.generation import decide
    from thinkless_lite.losses import informative_groups, threshold_step

    torch.manual_seed(0)
    trainer, dataset = make_trainer(tiny_model_dir, tmp_path, decoupled=True, alpha=0.5, mode_balance=0.5,
                                    within_mode_advantages=True, mode_centering=1.0, mode_threshold_lr=1.0,
                                    grpo_args={"learning_rate": 5e-2}.items())
    prompts = list(dataset["prompt"])
    trainer.model.eval()
    batch, _, before = decide(trainer.model, trainer.processing_class, prompts)
    point = trainer._decision_point(batch["input_ids"], batch["attention_mask"])
    assert torch.sigmoid(point.log_odds)[point.inverse].tolist() == pytest.approx(before, abs=1e-5)
    seen = {}
    original = trainer.mode_rule.advantages

    def spy(rewards, modes, p_short, p_think, group_size, kept=None, fisher=None, finished=None, valued=None):
        control, response, shift = original(rewards, modes, p_short, p_think, group_size, kept=kept, fisher=fisher,
                                            finished=finished, valued=valued)
        seen.update(rewards=rewards, modes=modes, p_short=p_short, p_think=p_think, kept=kept, shift=shift,
                    finished=finished, valued=valued)
        return control, response, shift

    object.__setattr__(trainer, "mode_rule", type("Spy", (), {"advantages": staticmethod(spy), "threshold_lr": 1.0})())
    trainer.train()
    keep = informative_groups(seen["rewards"], GROUP)
    assert torch.equal(seen["kept"].cpu(), keep) and seen["finished"] is None  # censoring is off by default
    # One step: the running Fisher information is this batch's alone.
    forced = torch.tensor([True, True] + [False] * (GROUP - 2)).repeat(len(prompts))
    assert torch.equal(seen["valued"].cpu(), forced)  # each mode valued by its forced (greedy) answer
    assert seen["shift"] == pytest.approx(threshold_step(seen["rewards"], seen["modes"], seen["p_short"],
                                                         seen["p_think"], GROUP, kept=keep, valued=forced))
    assert seen["shift"] != 0.0

    trainer.model.eval()
    after = torch.tensor(decide(trainer.model, trainer.processing_class, prompts)[2])
    mean_before = torch.logit(torch.tensor(before, dtype=torch.float64)).mean().item()
    mean_after = torch.logit(after.double()).mean().item()
    # Within the logits' own rounding (the tiny base computes in bfloat16: steps of ~2e-3 at these values).
    assert mean_after == pytest.approx(mean_before + seen["shift"], abs=1e-2)
    assert abs(seen["shift"]) > 0.1
    assert trainer._threshold["held"] != 0.0  # the ranking's step had moved the mean, and the hold undid it


def test_answers_cut_off_at_the_cap_leave_the_loss_and_the_mode_means(tiny_model_dir, tmp_path):
    """censor_truncated: an answer without EOS within max_completion_length gets no loss token and no advantage,
    the mode advantages are those of losses.mode_advantages with ``finished``, and the loss equals degrpo_loss over
    the finished answers of the kept groups."""
    from thinkless_lite.losses import SHORT_MODE, THINK_MODE, mode_advantages
    from thinkless_lite.trainers import finished_answers

    torch.manual_seed(0)
    trainer, dataset = make_trainer(tiny_model_dir, tmp_path, decoupled=True, alpha=0.5, mode_balance=0.5,
                                    within_mode_advantages=True, censor_truncated=True,
                                    grpo_args={"mask_truncated_completions": True})
    eos = trainer.processing_class.eos_token_id
    trainer.generation_config.sequence_bias = {(eos,): 3.0}  # the random model finishes some answers, not all
    rows = [dataset[i] for i in range(len(dataset)) for _ in range(GROUP)]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer._generate_and_score_completions(rows)
    finished = finished_answers(batch["completion_ids"], [eos], trainer.max_completion_length)
    assert 0 < finished.sum() < len(rows), finished.tolist()  # the batch holds both kinds
    cut = ~finished
    assert batch["completion_mask"][cut].sum() == 0 and (batch["advantages"][cut] == 0).all()

    rewards = torch.tensor(fixed_rewards(rows))
    keep = informative_groups(rewards, GROUP, finished=finished) & finished
    short_id, think_id = trainer.mode_ids[SHORT_MODE], trainer.mode_ids[THINK_MODE]
    modes = torch.full((len(rows),), -1)
    modes[batch["completion_ids"][:, 0] == short_id] = SHORT_MODE
    modes[batch["completion_ids"][:, 0] == think_id] = THINK_MODE
    with torch.no_grad():
        trainer.model.eval()
        logits = trainer.model(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"]).logits[:, -1]
        trainer.model.train()
        probs = torch.softmax(logits / trainer.temperature, dim=-1)
    control, response = mode_advantages(rewards, modes, probs[:, short_id], probs[:, think_id], GROUP,
                                        within_mode=True, finished=finished)
    advantages = response[:, None].expand_as(batch["completion_mask"]).clone()
    advantages[:, 0] = control
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    loss = trainer.compute_loss(trainer.model, batch)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention,
                                                              batch["completion_ids"].shape[1])
    # The mask of the answers as generated (TRL's masked the cut-off ones): censoring must be what removes them.
    mask = (torch.arange(batch["completion_ids"].shape[1])[None] < trainer.max_completion_length).float()
    mask = mask * torch.where(cut[:, None], torch.ones_like(batch["completion_mask"]), batch["completion_mask"])
    expected = degrpo_loss(logps[keep], logps[keep].detach(), advantages[keep], mask[keep], alpha=0.5, clip_eps=0.2)
    assert torch.allclose(loss, expected, atol=1e-6), (loss.item(), expected.item())



def test_censoring_needs_trl_to_mask_the_cut_off_answers_too(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="mask_truncated_completions"):
        make_trainer(tiny_model_dir, tmp_path, decoupled=True, alpha=0.5, censor_truncated=True)


def test_the_cut_off_warning_names_the_fix_and_what_censoring_does():
    from thinkless_lite.trainers import clipped_warning, finished_answers

    scored = clipped_warning(0.35, 2048, censored=False)
    assert "35% of thinking answers" in scored and "rl.max_completion_length=2048" in scored
    assert "rl.censor_truncated: true" in scored and "raise rl.max_completion_length" in scored
    assert "censored" in clipped_warning(0.35, 2048, censored=True)
    eos, pad = 9, 0
    ids = torch.tensor([[5, 6, eos, pad, pad], [5, 6, 7, 8, 6], [5, eos, pad, pad, pad]])
    assert finished_answers(ids, [eos], 5).tolist() == [True, False, True]
    # Padding beyond the cap (pad_to_multiple_of) may hold the EOS id when pad == eos: only the cap's columns count.
    assert finished_answers(torch.tensor([[5, 6, 7, eos]]), [eos], 3).tolist() == [False]


def one_step(folder, tmp_path, switch: str, on: bool, lora_scale: float = 0.2, questions=None, **grpo_args):
    """A real DeGRPO step from a trained adapter (LoRA B drawn at ``lora_scale``) with the trainer's generation
    ``switch`` set to ``on``: its completions, trained parameters and optimizer state."""
    torch.manual_seed(0)
    trainer, _ = make_trainer(folder, tmp_path / f"{switch}-{on}", decoupled=True, alpha=0.5,
                              grpo_args={"bf16": False, "learning_rate": 1e-2, **grpo_args},
                              **({"questions": questions} if questions else {}))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained adapter: a fresh one's delta is zero, which would merge trivially
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * lora_scale)
    start = {k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    setattr(trainer, switch, on)
    completions = []
    generate_single_turn = trainer._generate_single_turn

    def spy(*args, **kwargs):
        out = generate_single_turn(*args, **kwargs)
        completions.append(out[0])
        return out

    trainer._generate_single_turn = spy
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    assert any(not torch.equal(params[k], start[k]) for k in params), "the step trained something"
    state = [{k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for s in trainer.optimizer.state.values()]
    return completions, params, state


def assert_trained_alike(first, second):
    (completions_a, params_a, state_a), (completions_b, params_b, state_b) = first, second
    assert completions_a == completions_b
    assert params_a.keys() == params_b.keys() and all(torch.equal(params_a[k], params_b[k]) for k in params_b)
    assert len(state_a) == len(state_b) > 0
    assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(state_a, state_b))


def test_merged_lora_generation_trains_bit_identically(tiny_model_dir, tmp_path, monkeypatch):
    """A real DeGRPO step generating on merged LoRA weights (the default) and on PEFT's unmerged forward: the same
    completions, and bit for bit the same trained parameters and optimizer state afterwards."""
    import thinkless_lite.compat as compat

    merges = []
    merged_weight = compat._merged_weight
    monkeypatch.setattr(compat, "_merged_weight", lambda *a: merges.append(1) or merged_weight(*a))
    merged = one_step(tiny_model_dir, tmp_path, "merge_lora_for_generation", True)
    assert merges
    merges.clear()
    unmerged = one_step(tiny_model_dir, tmp_path, "merge_lora_for_generation", False)
    assert not merges
    assert_trained_alike(merged, unmerged)


def test_dropping_ended_rows_while_generating_trains_bit_identically(mini_base_dir, tmp_path, monkeypatch):
    """The pretrained mini base ends its answers at different lengths, so rows end while others decode: dropping
    them (the default, thinkless_lite.ended_rows) and decoding every row to the last give the same completions
    and bit for bit the same trained parameters and optimizer state; and dropping really decoded fewer rows."""
    import thinkless_lite.ended_rows as ended_rows

    rows_decoded = []
    decode = ended_rows._LiveRows._decode
    monkeypatch.setattr(ended_rows._LiveRows, "_decode",
                        lambda self, *a: rows_decoded.append(len(self.rows)) or decode(self, *a))
    mini = dict(lora_scale=0.01, max_completion_length=80,
                questions=["What is 3 + 4?", "What is 12 + 345?", "What is 123 + 4567?", "What is 88 + 99?"])
    dropped = one_step(mini_base_dir, tmp_path, "drop_ended_rows_in_generation", True, **mini)
    assert max(rows_decoded) == 4 * GROUP and len(set(rows_decoded)) >= 3, rows_decoded  # rows ended at 2+ times
    rows_decoded.clear()
    kept = one_step(mini_base_dir, tmp_path, "drop_ended_rows_in_generation", False, **mini)
    assert not rows_decoded
    lengths = [len(c) for c in dropped[0][0]]
    assert min(lengths) < max(lengths), "some answers ended before others"
    assert_trained_alike(dropped, kept)
