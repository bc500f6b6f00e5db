"""``thinkless-lite export``: what a hobbyist shares must load without thinkless_lite and answer as trained.

* the card (pure): the report's table, YAML metadata, the recipe; no numbers without a report;
* the adapter export loads with plain PEFT (``AutoPeftModelForCausalLM``, or ``PeftModel`` after the resize
  the card gives) in a process that never imports thinkless_lite, with the logits of thinkless_lite's own load;
* the merged export (``--merge``) gives the greedy answers of base + adapter on the mini-world test split
  (same text, same mode), and loads in a process with only transformers;
* the hub: ``huggingface_hub`` with the token from the environment; offline or unreachable, a clear error
  and the exported folder intact; bad input changes nothing;
* the real model (SmolLM2-135M, tied embeddings): merged logits equal unmerged;
* slow: ``thinkless-lite quickstart`` then ``thinkless-lite export --merge``: a fresh process with only
  transformers answers ``3+4`` with ``<short>`` and a long chain with ``<think>``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from conftest import user_env
from thinkless_lite.cli import main as cli_main
from thinkless_lite.export import ExportError, export
from thinkless_lite.export.card import CardFacts, recipe_datasets, render_card
from thinkless_lite.export.folder import MARKER, RECIPE_COPY, REPORT_COPY
from thinkless_lite.export.hub import is_hub_id
from thinkless_lite.export.inspect import combine_reports, eval_report, find_reports
from thinkless_lite.config import ModelConfig, load_config, save_resolved, to_dict
from thinkless_lite.tokens import ControlTokens

REPO = Path(__file__).resolve().parents[1]
HARD = "7+3*2-5*9+1"


# ---------------------------------------------------------------- helpers

def run_python(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=user_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done


def code_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def tree(root: Path) -> list[tuple]:
    return sorted((str(p.relative_to(root)), p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


NO_THINKLESS = "import sys\nassert 'thinkless_lite' not in sys.modules, sorted(sys.modules)\n"
STILL_NO_THINKLESS = "\nassert 'thinkless_lite' not in sys.modules, 'loading imported thinkless_lite'\n"


def quickstart_report() -> dict:
    """A report shaped like ``thinkless-lite quickstart``'s (numbers made up for the test): its ``final`` and
    ``after_warmup`` evaluation reports in the one schema of :mod:`thinkless_lite.report`."""
    def mode(acc, think, tokens, levels):
        return {"n": 16, "accuracy": acc, "think_ratio": think, "mean_tokens": tokens, "format_error_rate": 0.0,
                "by_difficulty": {str(k): {"n": 8, "accuracy": a, "think_ratio": t, "mean_tokens": n}
                                  for k, (a, t, n) in levels.items()}}
    auto = mode(0.9375, 0.5, 40.25, {1: (1.0, 0.0, 7.0), 8: (0.875, 1.0, 73.5)})
    think = mode(0.9375, 1.0, 90.5, {1: (1.0, 1.0, 61.0), 8: (0.875, 1.0, 120.0)})
    short = mode(0.5625, 0.0, 9.0, {1: (1.0, 0.0, 7.0), 8: (0.125, 0.0, 11.0)})
    from thinkless_lite.summaries import with_tokens_saved

    sweep = [{"tau": None, "mode": "short", "n": 16, "accuracy": 0.5625, "think_ratio": 0.0, "mean_tokens": 9.0},
             {"tau": 0.5, "mode": "auto", "n": 16, "accuracy": 0.9375, "think_ratio": 0.5, "mean_tokens": 40.25}]
    final = {"benchmarks": {"miniworld": with_tokens_saved({"auto": auto, "think": think, "short": short})},
             "tau_sweeps": {"miniworld": sweep}, "adapter": "runs/r1/rl/adapter"}
    warm = {"benchmarks": {"miniworld": {"think": think, "short": short, "auto": think}}, "tau_sweeps": {},
            "adapter": "runs/r1/warmup/adapter"}
    return {"final": final, "after_warmup": warm, "rl": {"adapter": "runs/r1/rl/adapter"}}


# ---------------------------------------------------------------- the card (pure)

def test_card_renders_the_report_table_metadata_and_recipe():
    recipe = to_dict(load_config(REPO / "configs" / "r1_distill_1.5b_t4.yaml"))
    report = eval_report(quickstart_report())
    card = render_card(CardFacts(
        kind="merged", model_ref="someone/thinkless-r1", base="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        base_hub_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", stage="rl", report=report, recipe=recipe,
        dtype="bfloat16", report_sources=["runs/r1/report.json"]))
    meta = front_matter(card)
    assert meta["base_model"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"thinkless", "degrpo", "merged"} <= set(meta["tags"])
    assert meta["datasets"] == ["Vinnnf/Hybrid-OpenR1-Math-220k-formatted", "openai/gsm8k"]  # GSM8K RL at the T4 cap
    # The table: accuracy, think ratio, tokens per benchmark and mode, rendered by thinkless_lite.report.
    assert "### miniworld" in card
    assert "| auto | 16 | 93.8% | 50.0% | 40.2 | 55.5% | 0.0% |" in card
    assert "| think | 16 | 93.8% | 100.0% | 90.5 | 0.0% | 0.0% |" in card
    assert "| short | 16 | 56.2% | 0.0% | 9.0 | 90.1% | 0.0% |" in card
    assert "| 8 | 8 | 87.5% / 100.0% / 73.5 | 87.5% / 100.0% / 120.0 | 12.5% / 0.0% / 11.0 |" in card  # by level
    assert "| forced short | 16 | 56.2% | 0.0% | 9.0 |" in card     # the tau sweep
    assert "From `runs/r1/report.json`" in card
    # What the tokens mean, the threshold, and the recipe.
    assert "`<short>`: the answer follows directly" in card and "threshold tau" in card
    assert "DeGRPO (decoupled)" in card and "alpha=0.001" in card and "short right +1" in card
    assert "Vinnnf/Hybrid-OpenR1-Math-220k-formatted" in card and "not into the" in card and "4-bit" in card
    snippet = code_blocks(card)[0]
    assert 'MODEL = "someone/thinkless-r1"' in snippet and "AutoModelForCausalLM" in snippet
    assert "peft" not in snippet.lower() and "thinkless_lite" not in snippet
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 11


def test_card_without_a_report_says_so_and_gives_no_numbers():
    card = render_card(CardFacts(kind="adapter", model_ref="out", base="/somewhere/mini-base",
                                       tokens=ControlTokens("<fast>", "<slow>", "</slow>")))
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta and meta["library_name"] == "peft"
    results = card.split("## Results")[1].split("## Training recipe")[0]
    assert "No evaluation report was found" in results
    assert not re.search(r"\d+(\.\d+)?%", results)
    assert "recipe (`resolved.yaml`" in card
    assert '["<fast>", "<slow>"]' in card and "AutoPeftModelForCausalLM" in card
    assert "resize_token_embeddings" in code_blocks(card)[1]          # unknown base size: the conditional resize
    assert "is a local folder, not a hub model" in card


def test_hub_ids_and_datasets_of_the_recipes():
    assert is_hub_id("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    for name in ("thinkless-lite/mini-base", "/abs/path", "./rel/x", "model.gguf", "plain", ""):
        assert not is_hub_id(name), name
    mini = to_dict(load_config(REPO / "configs" / "mini.yaml"))
    assert recipe_datasets(mini, "rl") == []
    r1 = to_dict(load_config(REPO / "configs" / "r1_distill_1.5b_t4.yaml"))
    assert recipe_datasets(r1, "warmup") == ["Vinnnf/Hybrid-OpenR1-Math-220k-formatted"]
    warm = render_card(CardFacts(kind="adapter", model_ref="x", base="b", stage="warmup", recipe=r1))
    assert "not applied: this is the warm-up adapter" in warm and "degrpo" not in front_matter(warm)["tags"]


def test_reports_are_found_next_to_the_adapter_and_must_be_its_own(tmp_path):
    run = tmp_path / "runs" / "r1"
    adapter = run / "rl" / "adapter"
    adapter.mkdir(parents=True)
    for name, acc in (("gsm8k", 0.5), ("math500", 0.25)):           # the T4 notebook's layout
        (run / "eval" / name).mkdir(parents=True)
        summary = {"n": 4, "accuracy": acc, "think_ratio": 0.5, "mean_tokens": 100.0}
        (run / "eval" / name / "report.json").write_text(json.dumps(
            {"benchmarks": {name: {"auto": summary}}, "adapter": "runs/r1/rl/adapter"}))
    (run / "eval" / "report.json").write_text(json.dumps(
        {"benchmarks": {"gsm8k": {"auto": {"n": 9, "accuracy": 0.9}}}, "adapter": "runs/other/rl/adapter"}))
    found = find_reports(adapter)
    assert [p.parent.name for p, _ in found] == ["gsm8k", "math500"]   # another adapter's report is left out
    combined = combine_reports([r for _, r in found])
    assert set(combined["benchmarks"]) == {"gsm8k", "math500"}
    assert combined["benchmarks"]["math500"]["auto"]["accuracy"] == 0.25
    # The quickstart's report: the final modes for rl/adapter, the after-warm-up ones for warmup/adapter.
    (run / "warmup" / "adapter").mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(quickstart_report()))
    warm = find_reports(run / "warmup" / "adapter")
    assert [p.name for p, _ in warm] == ["report.json"]
    assert warm[0][1]["benchmarks"]["miniworld"]["auto"]["think_ratio"] == 1.0
    assert find_reports(tmp_path) == []                            # not a stage folder: nothing guessed


# ---------------------------------------------------------------- a thinkless adapter on the mini base

def train_briefly(loaded, world, steps: int = 12, seed: int = 0) -> None:
    """A few full-sequence steps on both teachers' answers: LoRA and control rows move, and the model starts
    its answers with a control token (an untouched base does not)."""
    from thinkless_lite.data.hybrid import miniworld_responses
    from thinkless_lite.tokens import format_completion, format_prompt

    tokenizer, model = loaded.tokenizer, loaded.model
    texts = [format_prompt(tokenizer, r.question) + format_completion(r.mode, r.answer, r.reasoning) +
             tokenizer.eos_token for r in miniworld_responses(world, 48, seed_offset=seed)]
    tokenizer.padding_side = "right"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(steps):
        chunk = texts[(step * 16) % len(texts):][:16]
        batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, mini_base_dir):
    """``runs/mini/rl/adapter`` as a stage saves it (4-bit training backend, briefly trained: non-zero LoRA and
    control rows), the stage's resolved.yaml and a quickstart report beside it."""
    from thinkless_lite.model import load_model, save_adapter

    root = tmp_path_factory.mktemp("export-run")
    cfg = load_config(REPO / "configs" / "mini.yaml", [f"output_dir={root / 'runs'}", "name=mini",
                                                      "model.backend=hf", "model.lora_r=4", "model.lora_alpha=8"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(cfg.model, seed=0)
        train_briefly(loaded, cfg.miniworld)
    stage = cfg.run_dir / "rl"
    adapter = save_adapter(loaded, stage / "adapter")
    save_resolved(cfg, stage)
    report = quickstart_report()
    report["final"]["adapter"] = str(adapter)
    (cfg.run_dir / "report.json").write_text(json.dumps(report))
    return {"root": root, "adapter": adapter, "cfg": cfg, "run": cfg.run_dir}


@pytest.fixture(scope="module")
def adapter_export(mini_run):
    return export(mini_run["adapter"], mini_run["root"] / "shared" / "adapter")


@pytest.fixture(scope="module")
def merged_export(mini_run):
    return export(mini_run["adapter"], mini_run["root"] / "shared" / "merged", merge=True)


def perturb_trainable(model, seed: int, scale: float) -> None:
    """Move every trainable tensor by seeded noise: an adapter whose LoRA and control rows are all non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def reference_model(base, adapter):
    """thinkless_lite's own load of an adapter on the unmerged full-precision base."""
    from thinkless_lite.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(ModelConfig(name_or_path=str(base), backend="full", adapter_path=str(adapter)),
                          trainable=False)


def test_adapter_export_holds_the_adapter_tokenizer_and_card(adapter_export, mini_run):
    out = Path(adapter_export["out"])
    names = set(adapter_export["files"])
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "README.md", MARKER, REPORT_COPY, RECIPE_COPY} <= names
    assert adapter_export["bytes"] < 1_000_000                        # no embedding tables
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "adapter" and marker["stage"] == "rl" and marker["needs_resize"] is True
    assert marker["vocab_size"] == 262 and marker["base_vocab_size"] == 261 and marker["untrained_rows"] == []
    assert marker["control_token_ids"]["short"] == 261
    template = (out / "chat_template.jinja").read_text()
    assert "<think>" not in template                                  # neutralised: the model chooses
    card = (out / "README.md").read_text()
    assert "### miniworld" in card and "| auto | 16 | 93.8% | 50.0% | 40.2 | 55.5% | 0.0% |" in card
    assert "train_control_rows" not in card and "control-token rows trained: `all`" in card
    assert list(Path(mini_run["adapter"]).parent.glob(".*partial*")) == []


def test_adapter_export_loads_with_plain_peft_without_thinkless_lite(adapter_export, mini_run, mini_base_dir, tmp_path):
    out = Path(adapter_export["out"])
    card = (out / "README.md").read_text()
    auto_peft, peft_lines = code_blocks(card)
    prompts = ["<|im_start|>user\n3+4<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\n7+3*2-5<|im_end|>\n<|im_start|>assistant\n<short>4"]
    logits_file = tmp_path / "logits.pt"
    code = (NO_THINKLESS + "import torch\n" + peft_lines + STILL_NO_THINKLESS + "tok.padding_side = 'right'\n" +
            f"batch = tok({prompts!r}, return_tensors='pt', padding=True, add_special_tokens=False)\n"
            "with torch.no_grad():\n    logits = model(**batch).logits\n"
            f"torch.save({{'logits': logits, 'mask': batch['attention_mask']}}, {str(logits_file)!r})\n"
            + auto_peft + STILL_NO_THINKLESS)
    done = run_python(code, cwd=tmp_path)
    assert re.search(r"P\(think\)=\d\.\d\d <(short|think)>", done.stdout), done.stdout    # the card's snippet ran

    saved = torch.load(logits_file)
    ref = reference_model(mini_base_dir, out)
    tokenizer = ref.tokenizer
    tokenizer.padding_side = "right"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert torch.equal(batch["attention_mask"], saved["mask"])
    with torch.no_grad():
        expected = ref.model(**batch).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(saved["logits"][mask], expected[mask], atol=1e-5)


def test_merged_export_answers_like_base_plus_adapter(merged_export, mini_run, mini_base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkless_lite.data.miniworld import benchmark_items
    from thinkless_lite.generation import SamplingSettings, generate

    out = Path(merged_export["out"])
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md"} <= set(merged_export["files"])
    assert "adapter_config.json" not in merged_export["files"]
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert generation["pad_token_id"] == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token_id in ([generation["eos_token_id"]] if isinstance(generation["eos_token_id"], int)
                                      else generation["eos_token_id"])
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tokenizer) == 262
    meta = front_matter((out / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "base_model" not in meta   # the mini base is not on the hub

    merged = AutoModelForCausalLM.from_pretrained(out)
    ref = reference_model(mini_base_dir, mini_run["adapter"])
    questions = [item.question for item in benchmark_items(per_level=2, world=mini_run["cfg"].miniworld)]
    settings = SamplingSettings(max_new_tokens=144, temperature=0.0)
    for mode in ("auto", "short"):
        ours = generate(merged, tokenizer, questions, mode=mode, settings=settings, batch_size=16)
        theirs = generate(ref.model, ref.tokenizer, questions, mode=mode, settings=settings, batch_size=16)
        assert [(g.mode, g.completion) for g in ours] == [(g.mode, g.completion) for g in theirs]
        assert all(abs(a.p_think - b.p_think) < 1e-4 for a, b in zip(ours, theirs))
        if mode == "auto":   # the briefly trained adapter chooses, both ways: the comparison covers both modes
            assert {"think", "short"} <= {g.mode for g in ours}, [g.completion for g in ours]


def test_merged_export_runs_in_transformers_alone(merged_export, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkless_lite.generation import SamplingSettings, generate

    out = Path(merged_export["out"])
    code = NO_THINKLESS + f"""
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForCausalLM.from_pretrained({str(out)!r})
ids = tok.apply_chat_template([{{"role": "user", "content": "3+4"}}], add_generation_prompt=True, return_tensors="pt",
                              return_dict=True)["input_ids"]
out = model.generate(input_ids=ids, max_new_tokens=144, do_sample=False)
print("COMPLETION=" + repr(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))
""" + STILL_NO_THINKLESS + code_blocks((out / "README.md").read_text())[0] + STILL_NO_THINKLESS
    done = run_python(code, cwd=tmp_path)
    completion = eval(re.search(r"COMPLETION=(.*)", done.stdout).group(1))  # our own repr
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    ours = generate(model, tokenizer, ["3+4"], settings=SamplingSettings(max_new_tokens=144))[0]
    assert completion == ours.completion and ours.mode is not None   # the control token first, as in thinkless
    assert re.search(r"P\(think\)=\d\.\d\d <(short|think)>", done.stdout), done.stdout


# ---------------------------------------------------------------- the hub

def test_push_goes_through_huggingface_hub_with_the_environment_token(mini_run, monkeypatch, tmp_path):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or
                        f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    out = tmp_path / "pushed"
    result = export(mini_run["adapter"], out, push_to_hub="someone/thinkless-mini", private=True)
    (create, repo_id, create_kw), (upload, upload_kw) = calls
    assert (create, repo_id, create_kw["private"], create_kw["token"]) == ("create", "someone/thinkless-mini", True,
                                                                           "hf_test_token")
    assert upload == "upload" and upload_kw["repo_id"] == "someone/thinkless-mini"
    assert Path(upload_kw["folder_path"]) == out and upload_kw["token"] == "hf_test_token"
    assert result["pushed"] == "https://huggingface.co/someone/thinkless-mini"
    assert 'MODEL = "someone/thinkless-mini"' in (out / "README.md").read_text()

    # A finished export pushed later to another repository: its card's snippet follows.
    calls.clear()
    assert cli_main(["export", "--out", str(out), "--push-to-hub", "someone/renamed"]) == 0
    assert calls[0][1] == "someone/renamed" and calls[0][2]["private"] is False
    assert 'MODEL = "someone/renamed"' in (out / "README.md").read_text()


def test_push_offline_fails_clearly_and_keeps_the_export(mini_run, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "offline"
    assert cli_main(["export", "--adapter", str(mini_run["adapter"]), "--out", str(out), "--push-to-hub", "someone/x",
                     "--private"]) == 1
    err = capsys.readouterr().err
    assert "offline (HF_HUB_OFFLINE=1)" in err and f"{out} is intact" in err
    assert f"thinkless-lite export --out {out} --push-to-hub someone/x --private" in err
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()


@pytest.mark.slow
def test_push_to_an_unreachable_hub_fails_clearly_and_keeps_the_export(mini_run, tmp_path):
    """The installed command, hub online but its endpoint a closed local port (nothing leaves this machine)."""
    out = tmp_path / "unreachable"
    script = Path(sys.executable).parent / "thinkless-lite"
    done = subprocess.run([str(script), "export", "--adapter", str(mini_run["adapter"]), "--out", str(out),
                           "--push-to-hub", "someone/x"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=user_env(HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_test",
                                       HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1"))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "push to someone/x failed: could not reach the hub" in done.stderr
    assert f"{out} is intact" in done.stderr and "Traceback" not in done.stderr
    assert (out / "adapter_model.safetensors").is_file() and (out / MARKER).is_file()


def test_push_without_a_token_writes_nothing(mini_run, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(ExportError, match="needs a Hugging Face write token: set HF_TOKEN"):
        export(mini_run["adapter"], tmp_path / "x", push_to_hub="someone/x")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- bad input

def _adapter_files(folder: Path, adapter: Path) -> Path:
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, folder / name)
    return folder


def _folder_without_tokenizer(root: Path, adapter: Path) -> Path:
    return _adapter_files(root / "no-tokenizer", adapter)


def _folder_with_base_tokenizer(root: Path, adapter: Path) -> Path:
    """An adapter beside the base's own tokenizer, which has no <short>."""
    from transformers import AutoTokenizer

    from thinkless_lite.base import MINI_BASE_DIR

    folder = _adapter_files(root / "base-tokenizer", adapter)
    AutoTokenizer.from_pretrained(MINI_BASE_DIR).save_pretrained(folder)
    return folder


BAD = {
    "no such folder": (lambda root, a: (root / "missing", root / "o1"), "no such adapter folder"),
    "a run folder": (lambda root, a: (a.parent.parent, root / "o2"), "Did you mean --adapter"),
    "no tokenizer": (lambda root, a: (_folder_without_tokenizer(root, a), root / "o3"), "no tokenizer beside it"),
    "no control tokens": (lambda root, a: (_folder_with_base_tokenizer(root, a), root / "o4"),
                          "its tokenizer has no <short> token"),
    "out inside the adapter": (lambda root, a: (a, a / "export"), "is inside the adapter folder"),
    "out contains the adapter": (lambda root, a: (a, a.parent), "contains the adapter"),
    "out holds other files": (lambda root, a: (a, root / "busy"), "exists and is not empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_error_that_touches_nothing(case, mini_run, tmp_path, capsys):
    root = tmp_path / "work"
    root.mkdir()
    (root / "busy").mkdir()
    (root / "busy" / "notes.txt").write_text("mine")
    work = shutil.copytree(mini_run["run"], root / "runs" / "mini")
    make, message = BAD[case]
    adapter, out = make(root, work / "rl" / "adapter")
    before = tree(root)
    assert cli_main(["export", "--adapter", str(adapter), "--out", str(out), "--merge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert tree(root) == before


def test_an_existing_export_is_replaced_only_when_asked(adapter_export, mini_run, capsys):
    out = Path(adapter_export["out"])
    assert cli_main(["export", "--adapter", str(mini_run["adapter"]), "--out", str(out)]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert cli_main(["export", "--adapter", str(mini_run["adapter"]), "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    again = json.loads(printed[printed.rindex("\n{\n") + 1:])                  # the result, printed last
    assert again["files"] == adapter_export["files"]


def test_export_help_teaches_with_examples(capsys):
    from thinkless_lite.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for snippet in ("examples:", "--merge", "--push-to-hub REPO", "--private", "--report FILE",
                    "thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/merged --merge",
                    "HF_TOKEN", "not the 4-bit one"):
        assert snippet in text, snippet
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "export" in capsys.readouterr().out


# ---------------------------------------------------------------- the real model

def test_real_model_adapter_and_merged_exports(smollm2_dir, tmp_path):
    """SmolLM2-135M (tied embeddings, BPE, three new control tokens): merged logits equal base + adapter."""
    from transformers import AutoModelForCausalLM

    from thinkless_lite.model import load_model, save_adapter

    config = ModelConfig(name_or_path=str(smollm2_dir), backend="full", lora_r=4, lora_alpha=8,
                         lora_target_modules=["q_proj", "v_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = load_model(config)
    perturb_trainable(trained.model, seed=1, scale=0.02)
    adapter = save_adapter(trained, tmp_path / "adapter")
    del trained
    small = export(adapter, tmp_path / "adapter-export")
    marker = json.loads((Path(small["out"]) / MARKER).read_text())
    assert marker["needs_resize"] is True and marker["vocab_size"] == 49152 + 3 and small["bytes"] < 10_000_000
    merged_16bit = export(adapter, tmp_path / "merged-16bit", merge=True)  # --merge's default: 16-bit
    assert json.loads((Path(merged_16bit["out"]) / "config.json").read_text())["dtype"] == "bfloat16"
    merged_info = export(adapter, tmp_path / "merged", merge=True, dtype="float32")  # exact, to compare
    card = (Path(merged_info["out"]) / "README.md").read_text()
    assert "No evaluation report was found" in card and "base_model" not in front_matter(card)

    merged = AutoModelForCausalLM.from_pretrained(merged_info["out"])
    assert merged.config.tie_word_embeddings and merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    ref = reference_model(smollm2_dir, small["out"])                   # the exported adapter, thinkless' own load
    text = ref.tokenizer.apply_chat_template([{"role": "user", "content": "What is 3+4?"}], tokenize=False,
                                             add_generation_prompt=True) + "<short>7"
    batch = ref.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ours, theirs = merged(**batch).logits, ref.model(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    short_id = ref.control_ids["short"]
    assert torch.allclose(ours[0, :, short_id], theirs[0, :, short_id], atol=1e-4)   # the trained rows took part


def test_an_untied_head_gets_its_control_rows_merged_too(tmp_path):
    """R1-Distill-Qwen-1.5B's head is its own matrix: its trained <short> row must reach the merged head."""
    from transformers import AutoModelForCausalLM

    from thinkless_lite.mini_base import BaseTrainingConfig, build_model, build_tokenizer
    from thinkless_lite.model import load_model, save_adapter

    base_dir = tmp_path / "untied"
    tokenizer = build_tokenizer()
    base = build_model(tokenizer, BaseTrainingConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                                     num_attention_heads=4, num_key_value_heads=2))
    base.config.tie_word_embeddings = False
    base.lm_head.weight = torch.nn.Parameter(torch.randn(base.lm_head.weight.shape,
                                                         generator=torch.Generator().manual_seed(2)) * 0.02)
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = load_model(ModelConfig(name_or_path=str(base_dir), backend="full", lora_r=4, lora_alpha=8))
    assert set(trained.model.peft_config["default"].trainable_token_indices) == {"embed_tokens", "lm_head"}
    perturb_trainable(trained.model, seed=3, scale=0.5)
    adapter = save_adapter(trained, tmp_path / "adapter")
    merged_dir = export(adapter, tmp_path / "merged", merge=True)["out"]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.get_output_embeddings().weight is not merged.get_input_embeddings().weight
    ref = reference_model(base_dir, adapter)
    batch = ref.tokenizer(["<|im_start|>user\n3+4<|im_end|>\n<|im_start|>assistant\n<short>7"], return_tensors="pt",
                          add_special_tokens=False)
    with torch.no_grad():
        ours, theirs = merged(**batch).logits, ref.model(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    from safetensors.torch import load_file

    deltas = load_file(str(adapter / "adapter_model.safetensors"))
    (head_delta,) = [t for k, t in deltas.items() if "lm_head" in k and "trainable_tokens_delta" in k]
    (embed_delta,) = [t for k, t in deltas.items() if "embed_tokens" in k and "trainable_tokens_delta" in k]
    short_id = ref.control_ids["short"]
    assert torch.equal(merged.lm_head.weight[short_id], head_delta[0])
    assert torch.equal(merged.get_input_embeddings().weight[short_id], embed_delta[0])
    assert not torch.equal(head_delta[0], embed_delta[0])


# ---------------------------------------------------------------- the whole path (slow)

@pytest.mark.slow
def test_quickstart_then_merged_export_answers_in_plain_transformers(quickstart_run, tmp_path):
    adapter = quickstart_run / "rl" / "adapter"
    out = tmp_path / "merged"
    script = Path(sys.executable).parent / "thinkless-lite"
    done = subprocess.run([str(script), "export", "--adapter", str(adapter), "--out", str(out), "--merge"],
                          cwd=tmp_path, env=user_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = (out / "README.md").read_text()
    report = json.loads((quickstart_run / "report.json").read_text())
    auto = report["final"]["benchmarks"]["miniworld"]["auto"]
    assert f"| auto | {auto['n']} | {100 * auto['accuracy']:.1f}% | {100 * auto['think_ratio']:.1f}% |" in card
    assert "Stage 2, DeGRPO (decoupled)" in card

    records = [json.loads(line) for line in (quickstart_run / "eval" / "records.jsonl").read_text().splitlines()]
    auto = [r for r in records if r["requested"] == "auto" and r["benchmark"] == "miniworld"]
    chosen = {r["question"]: r["mode"] for r in auto}
    near_tie = {r["question"] for r in auto if abs(r["p_think"] - 0.5) < 0.05}
    code = NO_THINKLESS + f"""
import json
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForCausalLM.from_pretrained({str(out)!r})
firsts = {{}}
for question in {sorted(chosen)!r}:
    ids = tok.apply_chat_template([{{"role": "user", "content": question}}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    firsts[question] = tok.convert_ids_to_tokens(int(model(input_ids=ids).logits[0, -1].argmax()))
print("FIRSTS=" + json.dumps(firsts))
answers = {{}}
for question in ["3+4", {HARD!r}]:
    ids = tok.apply_chat_template([{{"role": "user", "content": question}}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=144, do_sample=False)
    answers[question] = {{"first": tok.convert_ids_to_tokens(int(out[0, ids.shape[1]])),
                         "text": tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)}}
print("ANSWERS=" + json.dumps(answers))
""" + STILL_NO_THINKLESS
    done = run_python(code, cwd=tmp_path)
    answers = json.loads(re.search(r"ANSWERS=(.*)", done.stdout).group(1))
    print(json.dumps(answers, indent=2))
    # Every held-out question: plain transformers on the merged export picks the mode evaluation picked (the
    # threshold lives in the control rows, so nothing outside the weights decides), except within 0.05 of a tie:
    # evaluation ran the NF4 base in bfloat16, the export is merged in 16-bit (measured: P(think) apart by up to
    # 0.04; 3 of 320 decisions flipped, all at P(think) 0.51-0.53).
    firsts = json.loads(re.search(r"FIRSTS=(.*)", done.stdout).group(1))
    differ = {q: (firsts[q], m) for q, m in chosen.items() if firsts[q] != f"<{m}>" and q not in near_tie}
    assert len(chosen) >= 300 and not differ, differ
    assert answers["3+4"]["first"] == "<short>" and answers["3+4"]["text"].startswith("<short>"), answers
    hard = answers[HARD]
    assert hard["first"] == "<think>" and "</think>" in hard["text"], answers
