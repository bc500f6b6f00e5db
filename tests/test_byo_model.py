"""Bring your own model (issue 21): a second model family from a .gguf file written here with the ``gguf`` package.

The fixture is what a converted file of another family looks like: a byte-level BPE tokenizer whose ids have a
hole (a duplicate string, so ``len(tokenizer)`` is one less than the highest id + 1, and a plain ``add_tokens``
hands out the last existing token's id), ``add_bos_token: true`` in the metadata, no chat template, and a tiny
Llama. A second file keeps the vocabulary but drops the merges: the character-level tokenizer a broken
conversion produces.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from gguf_model import finish, open_writer
from thinkless_lite.config import ConfigError, ModelConfig, load_config
from thinkless_lite.tokens import ControlTokens, format_prompt

SAMPLE = "The quick brown fox jumps over the lazy dog. What is the answer to this question? Think about it."


def _corpus() -> list[str]:
    lines = [SAMPLE] * 20 + ["think short answer direct reasoning step carry digit tens ones hundreds"] * 20
    for a in range(0, 100, 3):
        for b in range(0, 100, 7):
            lines.append(f"What is {a} + {b}? {a} + {b} = {a + b}. The answer is {a + b}.")
    return lines


def write_gguf(path: Path, *, merges: bool = True) -> Path:
    """A tiny Llama in GGUF: <pad> <eos> <bos> <unk>, a trained byte-level BPE, <unused0..3> with a hole."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=[],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    pieces = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + pieces + [f"<unused{i}>" for i in range(4)]
    types = [3] * 4 + [1] * len(pieces) + [3] * 4
    tokens[-3] = tokens[-2]  # the hole: a duplicate string, so the converted vocabulary loses id n-3
    writer = open_writer(path, "llama", len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merge_list = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    writer.add_token_merges(merge_list if merges else merge_list[:2])  # two merges: text stays in characters
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(3)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    return finish(writer, path, "llama", len(tokens))


@pytest.fixture(scope="module")
def byo(tmp_path_factory) -> dict:
    """The two .gguf files and a private conversion cache."""
    import os

    folder = tmp_path_factory.mktemp("byo")
    old = os.environ.get("THINKLESS_LITE_CACHE")
    os.environ["THINKLESS_LITE_CACHE"] = str(folder / "cache")
    yield {"gguf": write_gguf(folder / "byo.gguf"), "chars": write_gguf(folder / "byo-chars.gguf", merges=False),
           "folder": folder}
    if old is None:
        os.environ.pop("THINKLESS_LITE_CACHE", None)
    else:
        os.environ["THINKLESS_LITE_CACHE"] = old


def model_cfg(path, **extra) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), backend="full", lora_r=4, lora_alpha=8, train_control_rows="new",
                       **extra)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_the_fixture_has_a_hole_and_wants_bos(byo):
    from transformers import AutoTokenizer

    from thinkless_lite.gguf import gguf_to_hf

    raw = AutoTokenizer.from_pretrained(gguf_to_hf(byo["gguf"]))
    ids = raw.get_vocab().values()
    assert len(raw) == max(ids)  # one id missing
    assert raw.chat_template is None and raw.bos_token == "<bos>"


def test_control_tokens_get_fresh_ids_and_start_at_their_words(byo):
    from thinkless_lite.gguf import gguf_to_hf
    from thinkless_lite.model import load_model

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_to_hf(byo["gguf"])
    raw = AutoTokenizer.from_pretrained(folder)
    raw_vocab = raw.get_vocab()
    highest = max(raw_vocab.values())
    loaded = quiet(load_model, model_cfg(byo["gguf"]), trainable=True)
    tokenizer = loaded.tokenizer
    owners: dict[int, list[str]] = {}
    for text, token_id in tokenizer.get_vocab().items():
        owners.setdefault(token_id, []).append(text)
    control = [tokenizer.convert_tokens_to_ids(t) for t in ControlTokens().all]
    assert all(i > highest for i in control), (control, highest)  # past every existing id
    for text, token_id in zip(ControlTokens().all, control):
        assert owners[token_id] == [text]
    for text, token_id in raw_vocab.items():  # every existing token kept its id
        assert tokenizer.convert_tokens_to_ids(text) == token_id
    # each control row starts at the mean of its word's rows (input embedding and the untied head)
    pretrained = AutoModelForCausalLM.from_pretrained(folder)
    model = loaded.model
    for layer, base in [(model.get_input_embeddings(), pretrained.get_input_embeddings().weight),
                        (model.get_output_embeddings(), pretrained.get_output_embeddings().weight)]:
        weight = layer.token_adapter.base_layer.weight if hasattr(layer, "token_adapter") else layer.weight
        for text, token_id in zip(ControlTokens().all, control):
            pieces = raw(text.strip("<>"), add_special_tokens=False)["input_ids"]
            assert torch.allclose(weight[token_id], base[pieces].mean(dim=0), atol=1e-6), text
    assert sorted(loaded.model.peft_config["default"].trainable_token_indices["embed_tokens"]) == sorted(control)


def test_a_control_token_on_another_tokens_id_fails_loudly(byo):
    from transformers import AutoTokenizer

    from thinkless_lite.gguf import gguf_to_hf
    from thinkless_lite.vocabulary import check_control_ids

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    def holed():  # ids 0, 1, 3, 4: a hole at 2, no added tokens (what a conversion can leave)
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 3, "c": 4},
                                                                             [("a", "b")])))

    tokenizer = holed()
    tokenizer.add_tokens(list(ControlTokens().all))  # the plain add_tokens of before: <short> lands on "c"
    assert tokenizer.convert_tokens_to_ids("<short>") == 4
    with pytest.raises(RuntimeError, match="also"):
        check_control_ids(tokenizer, ControlTokens())
    from thinkless_lite.vocabulary import ensure_control_tokens

    tokenizer = holed()
    assert ensure_control_tokens(tokenizer, ControlTokens()) == [5, 6, 7]  # fresh ids past every id
    assert tokenizer.convert_ids_to_tokens(4) == "c" and tokenizer("abc<short>")["input_ids"] == [3, 4, 5]
    clean = AutoTokenizer.from_pretrained(gguf_to_hf(byo["gguf"]))
    from thinkless_lite.vocabulary import add_fresh_tokens

    ids = add_fresh_tokens(clean, list(ControlTokens().all))
    with pytest.raises(RuntimeError, match="never initialised"):  # a new token on one of the base's rows
        check_control_ids(clean, ControlTokens(), base_rows=max(ids) + 1, new=ControlTokens().all)


def test_bos_comes_first_once_in_training_and_generation(byo):
    from thinkless_lite import generation
    from thinkless_lite.model import load_model

    loaded = quiet(load_model, model_cfg(byo["gguf"]), trainable=False)
    tokenizer = loaded.tokenizer
    bos = tokenizer.bos_token_id
    prompt = format_prompt(tokenizer, "What is 3 + 4?")
    for special in (True, False):  # TRL's trainers tokenise with special tokens on; generation with them off
        ids = tokenizer(prompt + "<short>7", add_special_tokens=special)["input_ids"]
        assert ids[0] == bos and ids.count(bos) == 1, ids[:4]
    seen = []
    hook = loaded.model.get_input_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        generation.generate(loaded.model, tokenizer, ["What is 3 + 4?", "What is 12 + 30?"], mode="short",
                            settings=generation.SamplingSettings(max_new_tokens=3))
    finally:
        hook.remove()
    first = seen[0]  # the decision step: the padded prompts, left-padded
    for row in first.tolist():
        real = [t for t in row if t != tokenizer.pad_token_id]
        assert real[0] == bos and real.count(bos) == 1, row


def test_sanity_check_refuses_a_character_level_tokenizer_and_model_tokenizer_fixes_it(byo):
    from thinkless_lite.gguf import gguf_to_hf
    from thinkless_lite.base import MINI_BASE_NAME
    from thinkless_lite.vocabulary import load_tokenizer

    with pytest.raises(ConfigError, match="splits ordinary text into characters.*rebuilt from the file for "
                                          "SentencePiece.*Gemma.*GPT-2 BPE.*Set model.tokenizer"):
        quiet(load_tokenizer, model_cfg(byo["chars"]))
    # the same weights, the tokenizer taken from elsewhere (same ids): accepted
    tokenizer, _ = quiet(load_tokenizer, model_cfg(byo["chars"], tokenizer=str(gguf_to_hf(byo["gguf"]))))
    assert len(tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]) < 0.5 * len(SAMPLE)
    quiet(load_tokenizer, ModelConfig(name_or_path=MINI_BASE_NAME))  # character level by design: accepted


def test_a_start_refused_by_the_tokenizer_check_leaves_no_folder_behind(byo, tmp_path):
    """Issue 33: the refusal came after the warm-up had made ``<run>/warmup/``; the run folder is left as it was."""
    from thinkless_lite import cli

    def start(output_dir):
        return quiet(cli.main, ["warmup", "--config", "smollm2_135m_cpu", "--set",
                                f"model.name_or_path={byo['chars']}", "--set", f"output_dir={output_dir}",
                                "--set", "name=run"])

    assert start(tmp_path / "new") == 2
    assert not (tmp_path / "new").exists()  # nothing created: not the run folder, not warmup/
    earlier = tmp_path / "old" / "run" / "eval"
    earlier.mkdir(parents=True)
    (earlier / "report.md").write_text("earlier\n")
    assert start(tmp_path / "old") == 2
    assert [p.relative_to(tmp_path).as_posix() for p in sorted((tmp_path / "old").rglob("*"))] == \
        ["old/run", "old/run/eval", "old/run/eval/report.md"]


def test_chat_markers_in_the_vocabulary_that_are_not_single_tokens_are_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from thinkless_lite.vocabulary import check_tokenizer
    from thinkless_lite.tokens import FALLBACK_CHAT_TEMPLATE

    chars = sorted(set("<|>_imstartendusrhloe\n"))
    vocab = {c: i for i, c in enumerate(chars)} | {"<|im_start|>": len(chars), "<|im_end|>": len(chars) + 1}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab, [])), unk_token=None)
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    with pytest.raises(ValueError, match="in the vocabulary.*do not encode as single tokens"):
        check_tokenizer(tokenizer, "here")  # the markers are entries no text encodes to: a lost registration
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    check_tokenizer(tokenizer, "here")


def test_a_missing_gguf_package_is_a_one_line_error(byo, monkeypatch, tmp_path):
    from thinkless_lite import cli

    monkeypatch.setenv("THINKLESS_LITE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    from thinkless_lite.gguf import gguf_to_hf

    with pytest.raises(ConfigError, match=r"pip install 'thinkless-lite\[gguf\]'"):
        gguf_to_hf(byo["gguf"])
    assert cli.main(["warmup", "--set", f"model.name_or_path={byo['gguf']}", "--set",
                     f"output_dir={tmp_path}"]) == 2


def test_folded_control_rows_answer_like_the_wrapper_and_go_back(byo):
    """The rows folded in place give PEFT's merged table and the wrapper's logits, and the table goes back."""
    from thinkless_lite.control_rows import control_rows_folded
    from thinkless_lite.model import load_model

    loaded = quiet(load_model, model_cfg(byo["gguf"]), trainable=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    layer = model.get_input_embeddings().token_adapter
    with torch.no_grad():
        layer.trainable_tokens_delta["default"].add_(0.5)  # trained rows that differ from the base's
    ids = tokenizer(format_prompt(tokenizer, "What is 3 + 4?") + "<short>", return_tensors="pt",
                    add_special_tokens=False)
    with torch.no_grad():
        wrapped = model(**ids).logits
        before = layer.base_layer.weight.clone()
        table = layer.base_layer.weight.data_ptr()
        with control_rows_folded(model):
            assert layer.merged
            assert layer.base_layer.weight.data_ptr() == table  # written in place, not a copy of the whole table
            assert torch.equal(layer.base_layer.weight, layer.get_merged_weights(layer.active_adapters))  # PEFT's fold
            folded = model(**ids).logits
        assert not layer.merged and torch.equal(layer.base_layer.weight, before)
    assert torch.allclose(folded, wrapped, atol=1e-5)


def test_the_fixture_goes_through_warmup_rl_eval_and_a_16_bit_merge(byo, tmp_path):
    from thinkless_lite.callbacks import read_metrics
    from thinkless_lite.export import export
    from thinkless_lite.stages import evaluate, rl, warmup

    common = [f"model.name_or_path={byo['gguf']}", "model.backend=full", "model.lora_r=4", "model.lora_alpha=8",
              "model.train_control_rows=new", "threads=1", f"output_dir={tmp_path}", "name=byo",
              "miniworld.task=addition", "miniworld.difficulty_weights={1: 1.0}"]
    cfg = load_config(None, common + ["warmup.max_steps=5", "warmup.logging_steps=2", "warmup.save_steps=5",
                                      "warmup.data.num_examples=24", "warmup.per_device_train_batch_size=4"])
    summary = quiet(warmup.main, cfg)
    rows = read_metrics(tmp_path / "byo" / "warmup" / "metrics.jsonl")
    (end,) = [r for r in rows if "train_loss" in r]
    assert summary["train_loss"] == pytest.approx(end["train_loss"])  # the run's loss, not one logged step's
    adapter = Path(summary["adapter"])
    saved = json.loads((adapter / "tokenizer_config.json").read_text())
    assert saved.get("add_bos_token") in (None, False)  # BOS is written by the template, not added twice

    rl_cfg = load_config(None, common + [f"model.adapter_path={adapter}", "rl.max_steps=1", "rl.save_steps=1",
                                         "rl.num_generations=4", "rl.prompts_per_step=1",
                                         "rl.max_completion_length=8", "rl.data.num_examples=8", "rl.beta=0.0"])
    rl_summary = quiet(rl.main, rl_cfg)
    rl_adapter = Path(rl_summary["adapter"])
    eval_cfg = load_config(None, common + [f"model.adapter_path={rl_adapter}", "eval.limit=2", "eval.per_level=2",
                                           "eval.max_new_tokens=6", "eval.modes=[\"auto\"]", "eval.tau=0.5",
                                           "eval.sweep_tau=[]"])
    report = quiet(evaluate.main, eval_cfg)
    # the trained adapter answered every held-out question through its own tokenizer, routed by P(<think>)
    records = [json.loads(line) for line in (tmp_path / "byo" / "eval" / "records.jsonl").read_text().splitlines()]
    assert report["adapter"] == str(rl_adapter) and report["num_items"] == {"miniworld": 2} and len(records) == 2
    for record in records:
        assert record["requested"] == "tau=0.5" and record["completion"].startswith(("<think>", "<short>"))
        assert (record["mode"] == "think") == (record["p_think"] >= 0.5) and 1 <= record["num_tokens"] <= 6
    auto = report["benchmarks"]["miniworld"]["tau=0.5"]
    assert auto["n"] == 2 and auto["accuracy"] == sum(r["correct"] for r in records) / 2
    assert (tmp_path / "byo" / "eval" / "report.md").read_text().count("tau=0.5") >= 1

    out = tmp_path / "merged"
    quiet(export, rl_adapter, out, merge=True)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"  # --merge writes 16-bit, as its help says
