"""The Gradio demo under load: 20 concurrent gradio_client clients for a bounded time.

The app runs in this process on 127.0.0.1 and a free port (``prevent_thread_lock=True``); the clients run
in a child process, so this process's resident memory (``VmRSS`` in /proc/self/status) is the server's.
Every client sends a few mini-world questions to ``/answer`` (greedy, so each answer must equal the one
the engine gives when it is alone: concurrent requests queue, they never mix). Checked: every request is
answered, nothing crashes, memory stays flat between a warm-up round and the load round, an oversize
question is refused with a message, and the server answers normally afterwards. The server is closed
in ``finally`` whatever happens.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conftest import free_port
from thinkless_lite.config import load_config
from thinkless_lite.demo_engine import ThinklessEngine
from thinkless_lite.base import MINI_BASE_DIR, MINI_BASE_NAME

pytestmark = pytest.mark.slow

CLIENTS = 20
LOAD_SECONDS = 60          # clients start no new request after this
PER_CLIENT = 4             # at most this many questions per client
MAX_INPUT_CHARS = 500
RSS_SLACK_MB = 64          # allowed growth between the warm-up round and the end of the load round
REQUESTS = [("3+4", "think"), ("9*7", "auto"), ("2+5*3", "think"), ("6-2", "short"), ("8-3*4+1", "think"),
            ("5*5", "auto")]

LOAD_SCRIPT = r'''
import json, sys, threading, time
from gradio_client import Client

url, clients, seconds, per_client = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
requests = json.loads(sys.argv[5])
results, lock = [], threading.Lock()
stop_at = time.monotonic() + seconds
barrier = threading.Barrier(clients)

def client_loop(index):
    try:
        client = Client(url, verbose=False, analytics_enabled=False)
    except Exception as err:
        with lock:
            results.append({"client": index, "error": f"connect: {type(err).__name__}: {err}"})
        barrier.abort()
        return
    try:
        barrier.wait(timeout=120)   # all clients connected: the questions start together
        for n in range(per_client):
            if time.monotonic() > stop_at:
                break
            question, mode = requests[(index + n) % len(requests)]
            began = time.monotonic()
            try:
                out = client.predict(question, mode, None, api_name="/answer")
                row = {"client": index, "question": question, "mode": mode, "answer": out["answer"],
                       "chosen": out["mode"], "num_tokens": out["num_tokens"]}
            except Exception as err:
                row = {"client": index, "question": question, "mode": mode, "error": f"{type(err).__name__}: {err}"}
            row["seconds"] = time.monotonic() - began
            with lock:
                results.append(row)
    finally:
        client.close()

threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
'''


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from thinkless_lite.demo.app import build_app, launch

    shipped = (MINI_BASE_DIR / "model.safetensors").exists()
    name = MINI_BASE_NAME if shipped else str(tiny_model_dir)
    cfg = load_config(None, [f"model.name_or_path={name}", "model.backend=hf", "threads=1",
                             "demo.max_new_tokens=96", f"demo.max_input_chars={MAX_INPUT_CHARS}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = ThinklessEngine.from_config(cfg)
    demo = build_app(engine, cfg.demo, model_choices={})
    port = free_port()
    try:
        launch(demo, cfg.demo, port=port, prevent_thread_lock=True, quiet=True)
        yield {"url": f"http://127.0.0.1:{port}/", "engine": engine, "cfg": cfg}
    finally:
        demo.close()


def run_clients(url: str, clients: int, seconds: float, per_client: int, tmp_path: Path) -> list[dict]:
    script = tmp_path / "load_clients.py"
    script.write_text(LOAD_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run([sys.executable, str(script), url, str(clients), str(seconds), str(per_client),
                           json.dumps(REQUESTS)], capture_output=True, text=True, env=env,
                          timeout=seconds + 300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_twenty_concurrent_clients_are_all_answered_and_memory_stays_flat(server, tmp_path):
    engine = server["engine"]
    expected = {(q, m): engine.answer(q, mode=m).answer for q, m in REQUESTS}  # alone, greedy

    warm = run_clients(server["url"], CLIENTS, 60, 1, tmp_path)  # every client connects and asks once
    assert not [r for r in warm if "error" in r], warm
    gc.collect()
    rss_warm = rss_mb()

    began = time.monotonic()
    results = run_clients(server["url"], CLIENTS, LOAD_SECONDS, PER_CLIENT, tmp_path)
    elapsed = time.monotonic() - began
    gc.collect()
    rss_after = rss_mb()

    errors = [r for r in results if "error" in r]
    assert not errors, errors[:5]
    per_client = {i: [r for r in results if r["client"] == i] for i in range(CLIENTS)}
    assert all(len(rows) >= 1 for rows in per_client.values()), {i: len(r) for i, r in per_client.items()}
    for row in results:  # queued, never interleaved: the same answer as alone
        assert row["answer"] == expected[(row["question"], row["mode"])], row
        assert row["num_tokens"] <= server["cfg"].demo.max_new_tokens
    latencies = sorted(r["seconds"] for r in results)
    print(f"{len(results)} answers to {CLIENTS} clients in {elapsed:.0f}s; latency median "
          f"{latencies[len(latencies) // 2]:.1f}s, max {latencies[-1]:.1f}s; RSS {rss_warm:.0f} -> {rss_after:.0f} MB")
    assert len(results) >= 2 * CLIENTS  # "a few" each, within the window
    assert rss_after - rss_warm < RSS_SLACK_MB, f"server memory grew {rss_after - rss_warm:.0f} MB under load"


def test_an_oversize_question_is_refused_with_a_message_and_the_server_goes_on(server):
    from gradio_client import Client

    client = Client(server["url"], verbose=False, analytics_enabled=False)
    try:
        question = "1+" * MAX_INPUT_CHARS + "1"
        with pytest.raises(Exception, match=rf"The question is {len(question):,} characters long; the limit is "
                                            rf"{MAX_INPUT_CHARS:,} characters"):
            client.predict(question, "auto", None, api_name="/answer")
        with pytest.raises(Exception, match="the input is empty"):
            client.predict("   ", "auto", None, api_name="/answer")
        answer = client.predict("3+4", "think", None, api_name="/answer")
        assert answer["answer"] == server["engine"].answer("3+4", mode="think").answer
    finally:
        client.close()
