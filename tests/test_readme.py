"""README.md examples stay true: the sweep file parses into valid SAEs and every documented command exists."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_cli

from vsae.archs.registry import build_config
from vsae.train.sweep import load_sweep

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_sweep_file_is_valid(tmp_path):
    block = re.search(r"```toml\n(.*?)```", README, re.S).group(1)
    (tmp_path / "sweep.toml").write_text(block)
    specs, train = load_sweep(tmp_path / "sweep.toml")
    assert train == {"steps": 2000}
    for spec in specs:
        build_config(spec.arch, 576, spec.d_sae or 576 * spec.expansion, spec.overrides)


def test_readme_commands_exist_with_their_options():
    for line in re.findall(r"^vsae (\w+)(.*?)(?:#.*)?$", README, re.M):
        command, args = line
        help_text = run_cli(command, "--help").output
        for option in re.findall(r"(--[a-z-]+)", args):
            assert option in help_text, (command, option)


def test_version_flag():
    import vsae

    assert run_cli("--version").output.strip() == f"vsae {vsae.__version__}"
