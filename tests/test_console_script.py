"""The installed ``thinkless-lite`` console script, run the way a user runs it: from a folder outside the
repository, with nothing but the install on the import path (no ``python -m``, no pytest ``pythonpath``)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, user_env

pytestmark = pytest.mark.slow  # console scripts: a fresh interpreter imports torch and transformers per run

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "thinkless-lite"


@pytest.fixture(scope="module")
def script() -> Path:
    if not SCRIPT.exists():
        pytest.fail(f"console script not installed at {SCRIPT}; run `make install` (pip install -e .)")
    return SCRIPT


def test_help_from_another_folder(script, tmp_path):
    done = subprocess.run([str(script), "--help"], cwd=tmp_path, env=user_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "quickstart" in done.stdout and "demo" in done.stdout


def test_demo_serves_its_page_from_another_folder(script, tmp_path):
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("w") as sink:
        server = subprocess.Popen([str(script), "demo", "--config", str(REPO / "configs" / "mini.yaml"),
                                   "--port", str(port), "--set", "threads=1"],
                                  cwd=tmp_path, env=user_env(OMP_NUM_THREADS="1"), stdout=sink,
                                  stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline, page = time.time() + 180, None
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode("utf-8", "replace")
                    break
            except OSError:
                time.sleep(1)
        assert page is not None, f"no page (exit code {server.poll()}):\n{log.read_text()[-3000:]}"
        assert "gradio" in page.lower()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
