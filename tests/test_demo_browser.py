"""The Gradio demo in a real browser (system Chromium driven by Playwright) and through gradio_client.

The app runs in this process on 127.0.0.1 and a free port. It uses the shipped mini-world base when
``thinkless_lite/assets/mini-base/model.safetensors`` exists, else the random tiny model, with which only
the UI mechanics are checked (it does not answer correctly). Screenshots go to ``artifacts/demo_*.png``.
Chromium comes from Debian (``scripts/install_browser.sh``); Playwright's own download cannot work here.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import free_port
from thinkless_lite.config import ModelConfig, RunConfig
from thinkless_lite.data.miniworld import solve
from thinkless_lite.demo_engine import ThinklessEngine
from thinkless_lite.base import MINI_BASE_DIR, MINI_BASE_NAME

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000          # any single browser wait
STARTUP_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def chromium() -> str:
    """/usr/bin/chromium, installed with scripts/install_browser.sh when missing; skip only if that fails."""
    if not CHROMIUM.exists():
        try:
            done = subprocess.run(["bash", str(REPO / "scripts" / "install_browser.sh")], capture_output=True,
                                  text=True, timeout=900)
            why = (done.stderr or done.stdout).strip()[-400:]
        except (OSError, subprocess.TimeoutExpired) as err:
            why = f"{type(err).__name__}: {err}"
        if not CHROMIUM.exists():
            pytest.skip(f"{CHROMIUM} is absent and scripts/install_browser.sh could not install it: {why}")
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The demo app, launched in a background thread; yields url, config and whether the model is real."""
    from thinkless_lite.demo.app import build_app, launch

    shipped = (MINI_BASE_DIR / "model.safetensors").exists()
    name = MINI_BASE_NAME if shipped else str(tiny_model_dir)
    cfg = RunConfig(model=ModelConfig(name_or_path=name, backend="hf"))
    cfg.demo.max_new_tokens = 160 if shipped else 48
    engine = ThinklessEngine.from_config(cfg)
    # The picker offers the same model again as a recipe file, so swapping keeps the answers the same.
    recipe = tmp_path_factory.mktemp("recipes") / "same-model.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name_or_path": name, "backend": "hf"},
                                      "demo": {"max_new_tokens": cfg.demo.max_new_tokens}}), encoding="utf-8")
    demo = build_app(engine, cfg.demo, model_choices={"same model (reloaded)": str(recipe)})
    port = free_port()
    try:
        launch(demo, cfg.demo, port=port, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{port}/"
        yield SimpleNamespace(url=url, cfg=cfg, real=shipped, engine=engine, recipe=recipe)
    finally:
        demo.close()


@pytest.fixture()
def page(chromium, server):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = context = None
    try:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(server.url, timeout=TIMEOUT_MS, wait_until="domcontentloaded")
        tab.wait_for_selector("#question textarea", timeout=TIMEOUT_MS)
        yield tab
    finally:
        if context is not None:
            context.close()
        if browser is not None:
            browser.close()
        pw.stop()


def _ask(page, question: str) -> dict:
    """Type a question, press Ask, wait for the badge and the finished answer; return what the page shows."""
    page.fill("#question textarea", question)
    page.click("#ask-btn")
    # The decision badge leaves idle/pending as soon as the control token is chosen.
    page.wait_for_function(
        "() => { const b = document.querySelector('#mode-badge [data-mode]');"
        " return b && !['idle', 'pending'].includes(b.dataset.mode); }", timeout=TIMEOUT_MS)
    page.wait_for_selector(f'#gen-stats-value[data-state="done"][data-question="{question}"]', timeout=TIMEOUT_MS)
    badge = page.locator("#mode-badge [data-mode]")
    bot = page.locator("#chat .message.bot, #chat [data-testid='bot']")
    return {"mode": badge.get_attribute("data-mode"), "badge_text": badge.inner_text().strip(),
            "p_think": page.locator("#p-think-value").get_attribute("data-p"),
            "tokens": page.locator("#gen-stats-value").get_attribute("data-tokens"),
            "answer": page.locator("#gen-stats-value").get_attribute("data-answer"),
            "chat": page.locator("#chat").inner_text(), "bot_messages": bot.count()}


def test_demo_in_browser(page, server, artifacts_dir):
    examples = server.cfg.demo.examples
    easy, hard = examples[0], examples[-1]
    started = time.time()

    shown = _ask(page, easy)
    assert shown["mode"] in ("short", "think", "none")
    assert shown["badge_text"]
    assert shown["p_think"] is not None and 0.0 <= float(shown["p_think"]) <= 1.0
    assert int(shown["tokens"]) >= 1
    assert "tokens ·" in shown["chat"]            # the finished answer's footer is in the chat
    page.screenshot(path=str(artifacts_dir / "demo_easy.png"), full_page=True)

    shown = _ask(page, hard)
    assert shown["mode"] in ("short", "think", "none")
    assert shown["chat"].count("tokens ·") == 2
    page.screenshot(path=str(artifacts_dir / "demo_hard.png"), full_page=True)

    # Force think: the badge must say think, and a Thinking section appears in the chat.
    page.locator("#mode-select label", has_text="Force think").click()
    question = examples[len(examples) // 2]
    shown = _ask(page, question)
    assert shown["mode"] == "think"
    assert "THINK" in shown["badge_text"]
    assert "Thinking" in shown["chat"]
    if shown["answer"] and shown["answer"].isalnum():
        assert shown["answer"] in shown["chat"]       # the final answer is shown, below the Thinking section
    if server.real:  # the mini base reasons reliably when made to think
        assert shown["answer"] == str(solve(question))
    page.screenshot(path=str(artifacts_dir / "demo_force_think.png"), full_page=True)

    # Compare: the chosen answer against forced think, with the tokens saved.
    page.locator("#mode-select label", has_text="Auto").click()
    page.click("#compare-btn")
    page.wait_for_selector("#compare-value", timeout=TIMEOUT_MS)
    compare = page.locator("#compare-value")
    assert "forced think" in compare.inner_text()
    saved = int(compare.get_attribute("data-saved"))
    assert saved == server.engine.compare(question, max_new_tokens=server.cfg.demo.max_new_tokens)["tokens_saved"]
    page.screenshot(path=str(artifacts_dir / "demo_compare.png"), full_page=True)

    # Input limits are explained in the page, not swallowed.
    page.fill("#question textarea", "1+" * (server.cfg.demo.max_input_chars // 2 + 5))
    page.click("#ask-btn")
    error = page.locator("#error-box .tl-error")
    error.wait_for(timeout=TIMEOUT_MS)
    assert f"limit is {server.cfg.demo.max_input_chars:,} characters" in error.inner_text()
    page.fill("#question textarea", "")
    page.click("#ask-btn")
    page.wait_for_function("() => document.querySelector('#error-box').innerText.includes('empty')",
                           timeout=TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "demo_error.png"), full_page=True)
    assert time.time() - started < 600


def test_gradio_client_answer_endpoint(server):
    from gradio_client import Client

    client = Client(server.url, verbose=False, analytics_enabled=False)
    try:
        result = client.predict("3+4", "think", None, api_name="/answer")
        assert {"mode", "answer", "p_think", "reasoning", "num_tokens", "seconds"} <= set(result)
        assert result["mode"] == "think"
        assert 0.0 <= result["p_think"] <= 1.0
        assert result["num_tokens"] >= 1
        if server.real:
            assert result["answer"] == "7"
        assert client.predict("3+4", "short", None, api_name="/answer")["mode"] == "short"
        assert client.predict("3+4", "auto", 0.0, api_name="/answer")["mode"] == "think"   # tau 0: always think
        with pytest.raises(Exception, match="empty"):
            client.predict("", "auto", None, api_name="/answer")
    finally:
        client.close()


def test_model_picker_swaps_the_engine(page, server, artifacts_dir):
    page.get_by_text("Model / adapter").click()
    page.locator("#model-picker input").click()
    page.get_by_role("option", name="same model (reloaded)").click()
    page.click("#load-model-btn")
    page.wait_for_function("() => document.querySelector('#model-info').innerText.includes('same model (reloaded)')",
                           timeout=TIMEOUT_MS)
    assert page.locator("#error-box .tl-error").count() == 0
    shown = _ask(page, "2+5*3")
    assert shown["mode"] in ("short", "think", "none")
    page.screenshot(path=str(artifacts_dir / "demo_model_picker.png"), full_page=True)
