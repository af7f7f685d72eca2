"""Session fixtures: a tiny random GPT-NeoX (SmolLM2 tokenizer) and a small store harvested through the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vsae.cli.app import app


def run_cli(*args: str, expect: int = 0):
    """Invoke `vsae ARGS` in-process as a user would type it; check the exit code."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, (
        f"vsae {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}"
    )
    return result


def run_vsae(*args: str, expect: int = 0, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `vsae` console script in a subprocess (exit codes, one-line errors)."""
    exe = Path(sys.executable).with_name("vsae")
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert proc.returncode == expect, (
        f"vsae {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def run_main(capfd, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`vsae ARGS` through the console entry point in this process (its error handling, exit code, stdout
    and stderr as a user sees them) — the same as run_vsae without a Python start-up per call."""
    from vsae.cli.app import main

    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["vsae", *map(str, args)]
    capfd.readouterr()
    try:
        if cwd is not None:
            os.chdir(cwd)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(sys.argv, code, out, err)


def assert_same_trainer_state(a: dict, b: dict) -> None:
    """Model tensors, Adam moments and τ of two trainer states are bitwise equal."""
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for name, state in a["adam"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["adam"][name][k])), (name, k)
    assert torch.equal(a["tau"], b["tau"])


def torchrun_vsae(*args, env: dict | None = None, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 -m vsae.cli ARGS` on a free port, one thread per rank."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    cmd += ["--master-port", str(port), "-m", "vsae.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from vsae.harvest.models import packaged_smollm2

    return AutoTokenizer.from_pretrained(packaged_smollm2())


def save_tiny_neox(path: Path, tokenizer) -> Path:
    """A 2-layer GPT-NeoX of width 64 with random weights (seed 0) and `tokenizer`, saved at `path`."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPTNeoXForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer) -> Path:
    return save_tiny_neox(tmp_path_factory.mktemp("models") / "tiny-neox", tokenizer)


HARVEST_ARGS = [
    "--layer",
    "1",
    "--dataset",
    "pydoc",
    "--tokens",
    "24000",
    "--chunk-tokens",
    "512",
    "--shard-chunks",
    "4",
    "--heldout-fraction",
    "0.1",
]


@pytest.fixture(scope="session")
def store(tmp_path_factory, tiny_model) -> Path:
    path = tmp_path_factory.mktemp("stores") / "acts"
    run_cli("harvest", tiny_model, *HARVEST_ARGS, "--store", path)
    return path


@pytest.fixture(scope="session")
def store_info(store) -> dict:
    rows = json.loads(run_cli("info", store, "--json").output)
    assert len(rows) == 1
    return rows[0]


def synthetic_store(path: Path, d: int = 16, atoms: int = 48, tokens: int = 20000) -> Path:
    """A small ground-truth store written through `vsae synthetic`."""
    run_cli(
        "synthetic",
        "--store",
        path,
        "--d",
        d,
        "--atoms",
        atoms,
        "--active",
        "3",
        "--tokens",
        tokens,
        "--chunk-tokens",
        "1024",
    )
    return path


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_mount_namespace = pytest.mark.skipif(
    not _can_unshare(),
    reason="needs `unshare -m` (root, or a user namespace) for a real read-only or full disk",
)


def in_mount_namespace(setup: str, command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Shell `setup` (a read-only bind mount, a small tmpfs), then `command`, in a private mount namespace:
    the file system's real errors, whoever runs the tests. `vsae` in `command` is this environment's."""
    exe = Path(sys.executable).with_name("vsae")
    script = f"set -e; {setup}; set +e; {command.replace('vsae ', f'{exe} ', 1)}"
    return subprocess.run(
        ["unshare", "-m", "bash", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def read_only(path: Path) -> str:
    """The `setup` of in_mount_namespace that makes `path` read-only."""
    return f"mount --bind '{path}' '{path}' && mount -o remount,bind,ro '{path}'"
