"""The soak's 2-minute form (bench/soak.py --minutes 2) passes: the server, the emulator,
nginx and RabbitMQ through a cutting proxy as real processes, a bounded load of every
endpoint, pushes into subscribed chats and each kind of fault once (a slot of 15 s), then
the checks against issue 11's targets. The soak prints its per-slot table and its checks;
they are this test's failure message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.nginx import NGINX
from tests.fixtures.server_config import ROOT, SUBPROCESS_ENV


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_two_minute_soak_passes(tmp_path: Path) -> None:
    if not os.access(NGINX, os.X_OK):
        pytest.skip(f"nginx not found at {NGINX} (apt-get install nginx, or set TEST_NGINX)")
    run = subprocess.run(
        [sys.executable, "bench/soak.py", "--minutes", "2", "--workdir", str(tmp_path)],
        cwd=ROOT, env=SUBPROCESS_ENV, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=280,
    )  # fmt: skip
    report = run.stdout[-6000:] + run.stderr[-3000:]
    print(report)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("SOAK PASS"), report
