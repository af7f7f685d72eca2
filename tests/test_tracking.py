"""`--wandb PROJECT` in W&B's offline mode: the files written hold every metrics.jsonl record, the config and
the eval results. The .wandb files are read back with a reader written here from the record-log format
(LevelDB-style 32 KiB blocks of CRC/length/type-framed protobuf records), not through wandb itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, synthetic_store

pytest.importorskip("wandb")

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Every protobuf Record of a .wandb file: a 7-byte file header, then framed chunks (7-byte header:
    CRC-32C, little-endian length, type) that never straddle a 32 KiB block boundary."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer too short for a header: skipped
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding at the end of a block
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def read_runs(folder: Path) -> dict:
    """History rows by step, config and summary of all offline runs under a checkpoint folder."""
    out = {"history": {}, "config": {}, "summary": {}, "ids": set()}
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":  # the run record carries the initial config
                out["ids"].add(r.run.run_id)
                out["config"] |= {i.key: json.loads(i.value_json) for i in r.run.config.update}
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                out["history"][row["_step"]] = row
            elif kind == "config":
                out["config"] |= {i.key: json.loads(i.value_json) for i in r.config.update}
            elif kind == "summary":
                out["summary"] |= {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update
                }
    return out


def test_wandb_offline_holds_every_record_the_config_and_the_eval(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    store = synthetic_store(tmp_path / "s", d=16, atoms=32, tokens=8000)
    args = ("--store", store, "--k", "4", "--dict-size", "64", "--steps", "30", "--log-every", "10")
    run_cli(
        "train", *args, "--arch", "topk", "--arch", "vsae_topk", "--out", tmp_path / "o", "--wandb", "proj"
    )
    run_cli("eval", tmp_path / "o", "--wandb", "proj")
    for name in ("topk_64_k4_s0", "vsae_topk_64_k4_s0"):
        folder = tmp_path / "o" / name
        logged = read_runs(folder)
        assert len(logged["ids"]) == 1, "training and eval must land in one W&B run"
        jsonl = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert sorted(logged["history"]) == [m["step"] for m in jsonl] == [0, 10, 20, 29]
        for m in jsonl:
            row = logged["history"][m["step"]]
            for key, value in m.items():
                if key != "step":
                    assert row[key] == pytest.approx(value, nan_ok=True), (name, key)
        cfg = json.loads((folder / "cfg.json").read_text())
        assert logged["config"]["model"]["architecture"] == cfg["model"]["architecture"]
        assert logged["config"]["training"]["lr"] == cfg["training"]["lr"]
        result = json.loads((folder / "eval.json").read_text())
        assert logged["summary"]["eval/fve"] == pytest.approx(result["fve"])
        assert logged["summary"]["eval/l0"] == pytest.approx(result["l0"])


def test_bad_project_name_is_refused_before_any_work(tmp_path, capfd):
    from conftest import run_main

    store = synthetic_store(tmp_path / "s", d=16, atoms=32, tokens=8000)
    proc = run_main(
        capfd, "train", "--store", store, "--steps", "2", "--out", tmp_path / "o", "--wandb", "a/b"
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --wandb")
    assert not (tmp_path / "o").exists()


def test_an_unreadable_run_id_file_starts_a_new_run(tmp_path, monkeypatch):
    """A wandb_run.json cut short (a kill mid-write) must not stop `vsae eval --wandb` with a traceback."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    store = synthetic_store(tmp_path / "s", d=16, atoms=32, tokens=8000)
    args = ("--store", store, "--k", "4", "--dict-size", "64", "--steps", "5", "--arch", "topk")
    run_cli("train", *args, "--out", tmp_path / "o", "--wandb", "proj")
    folder = tmp_path / "o" / "topk_64_k4_s0"
    (folder / "wandb_run.json").write_text('{"project": "pr')
    run_cli("eval", folder, "--no-ce", "--wandb", "proj")
    assert json.loads((folder / "wandb_run.json").read_text())["project"] == "proj"
    assert len(read_runs(folder)["ids"]) == 2
