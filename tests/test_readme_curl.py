"""The README's "API in five curl calls" block, run as written against `make run`'s embedded default
(SQLite, in-process tasks) in a scratch directory: the ledger calls, the event that rewards bob and
the refund that takes half of it back answer what the README's comments say."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .test_deploy import TEST_ONLY_ENV, _free_port

ROOT = Path(__file__).resolve().parent.parent
# Beside the test-only values, the broker and cache of the test run: `make run` has none.
DROPPED = TEST_ONLY_ENV | {"CELERY_BROKER_URL", "REDIS_URL", "CACHE_URL"}


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## API in five curl calls") :]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def _documents(output: str) -> list[dict]:
    """The JSON bodies curl printed one after the other (without newlines between them)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(output):
        if output[at].isspace():
            at += 1
            continue
        document, at = decoder.raw_decode(output, at)
        found.append(document)
    return found


def test_the_readme_curl_block_runs_as_written_against_the_embedded_default(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings", DEBUG="1", PORT=str(port),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )  # fmt: skip

    def manage(*args):
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr[-2000:]

    manage("migrate", "--noinput")
    manage("bootstrap_embedded")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the embedded server did not start"
                time.sleep(0.3)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _readme_block()],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    credit, capture, alice, event, bob, refund, bob_after = _documents(done.stdout)
    assert credit["balance"] == 500
    assert capture["balance"] == 350
    assert (alice["user_id"], alice["balance"], alice["held"], alice["available"]) == ("alice", 350, 0, 350)
    assert event["status"] == "processed"
    assert (bob["user_id"], bob["balance"]) == ("bob", 20)  # "bob got 20 points for q-1"
    assert refund["status"] == "processed"
    assert bob_after["balance"] == 10  # "10 points left"
