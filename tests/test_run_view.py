"""The run in view: a live per-SAE metrics table under the training bar (seen in a pseudo-terminal, as a
user's terminal shows it) and a summary table of the sweep at the end."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from conftest import synthetic_store

SWEEP = """[train]
steps = 60
batch_size = 256
log_every = 10
[[sae]]
arch = "topk"
d_sae = 64
k = 4
[[sae]]
arch = "vsae_topk"
d_sae = 64
k = 4
"""


def in_terminal(*args: str, cwd: Path) -> str:
    """Run `vsae ARGS` with a pseudo-terminal as stdout and stderr; everything it drew, escapes removed."""
    main, child = pty.openpty()
    exe = Path(sys.executable).with_name("vsae")
    env = os.environ | {"COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen([str(exe), *args], stdout=child, stderr=child, cwd=cwd, env=env)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(main)
    text = b"".join(chunks).decode("utf-8", "replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n")


def test_training_shows_live_metrics_per_sae_and_a_summary(tmp_path):
    synthetic_store(tmp_path / "s", d=16, atoms=32, tokens=8000)
    (tmp_path / "sweep.toml").write_text(SWEEP)
    screen = in_terminal("train", "--store", "s", "--config", "sweep.toml", "--out", "o", cwd=tmp_path)
    runs = {
        name: [json.loads(x) for x in (tmp_path / "o" / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("topk_64_k4_s0", "vsae_topk_64_k4_s0")
    }
    # live rows: name, step, loss, FVE, L0, dead (and KL for the VSAE) of an intermediate logging step, drawn
    # while the bar still ran; the values are the ones metrics.jsonl recorded at that step
    header = [
        ln for ln in screen.splitlines() if re.match(r"\s*SAE\s+step\s+loss\s+FVE\s+L0\s+dead\s+KL", ln)
    ]
    assert header, screen
    for name, log in runs.items():
        m = log[3]  # step 30
        row = re.search(rf"^{name}\s+{m['step']}\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", screen, re.M)
        assert row, (name, screen)
        assert float(row[2]) == round(m["fve"], 4) and float(row[3]) == round(m["l0"], 1)
        assert (row[5] == "—") == ("vsae" not in name)
    # the summary after the run: the last logged FVE and L0 and a positive own throughput, one row per SAE
    for name, log in runs.items():
        last = log[-1]
        row = re.search(rf"│ {name}\s+│ (\S+) │\s+(\S+) │\s+(\S+) │\s+([\d,]+) │", screen)
        assert row, (name, screen)
        assert float(row[1]) == round(last["fve"], 4) and float(row[2]) == round(last["l0"], 1)
        assert int(row[4].replace(",", "")) > 0
