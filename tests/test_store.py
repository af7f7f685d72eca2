"""Harvest and store at production quality: resume after kill -9, one writer, bad input, sources, reader."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_vsae, torchrun_vsae

from vsae.errors import VsaeError
from vsae.store.attrs import FINISH
from vsae.store.layout import open_root, to_storage
from vsae.store.lock import TableLock
from vsae.store.reader import ShuffledBatches
from vsae.store.table import open_table

ARGS = [
    "--layer",
    "1",
    "--dataset",
    "pydoc",
    "--tokens",
    "6000",
    "--chunk-tokens",
    "256",
    "--shard-chunks",
    "2",
]
ARRAYS = ("activations", "tokens", "doc_pos", "contexts", "chunk_sum", "chunk_sumsq", "committed")


def _vsae_env(**extra):
    return {**os.environ, **extra}


def _harvest_proc(model, store, env=None, extra=()):
    exe = Path(sys.executable).with_name("vsae")
    return subprocess.run(
        [str(exe), "harvest", str(model), *ARGS, *extra, "--store", str(store)],
        capture_output=True,
        text=True,
        env=env or os.environ,
        timeout=300,
    )


def _assert_same_store(a: Path, b: Path):
    ta, tb = open_table(str(a)), open_table(str(b))
    for name in ARRAYS:
        assert np.array_equal(ta.group[name][:], tb.group[name][:]), name
    assert _attrs_but_run_options(ta.attrs) == _attrs_but_run_options(tb.attrs)


def _attrs_but_run_options(attrs: dict) -> dict:
    harvest = {
        k: v
        for k, v in attrs["provenance"]["harvest"].items()
        if k not in ("store", "force", "writer_threads")
    }
    return attrs | {"provenance": attrs["provenance"] | {"harvest": harvest}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("ref") / "acts"
    run_cli("harvest", tiny_model, *ARGS, "--store", path)
    return path


# finish:1 after the arrays are trimmed, finish:2 after the statistics, finish:3 before the completion mark
@pytest.mark.parametrize(
    "point",
    [
        "layout:1",
        "commit-start:3",
        "commit-mid:2",
        "commit-before-progress:4",
        "commit-end:5",
        "finish:1",
        "finish:2",
        "finish:3",
    ],
)
def test_resume_after_kill_gives_identical_store(tiny_model, reference, tmp_path, point):
    store = tmp_path / "acts"
    killed = _harvest_proc(tiny_model, store, env=_vsae_env(VSAE_FAILPOINT=point))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    info = json.loads(run_cli("info", store, "--json").output)[0]
    assert not info["complete"]
    resumed = _harvest_proc(tiny_model, store)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_store(store, reference)


def test_compression_level_changes_bytes_not_values(tiny_model, reference, tmp_path):
    store = tmp_path / "acts"
    assert _harvest_proc(tiny_model, store, extra=["--compression-level", "9"]).returncode == 0
    ours, ref = open_table(str(store)), open_table(str(reference))
    blosc = ours.acts.metadata.to_dict()["codecs"][0]["configuration"]["codecs"][1]["configuration"]
    assert blosc["clevel"] == 9 and ours.attrs["config"]["compression_level"] == 9
    for name in ARRAYS:
        assert np.array_equal(ours.group[name][:], ref.group[name][:]), name


def test_parallel_shard_writers_give_the_same_store_and_resume(tiny_model, reference, tmp_path):
    """Three shards compressed and written at once: killed mid-commit, resumed, the store is the same."""
    store = tmp_path / "acts"
    threads = ["--writer-threads", "3"]
    killed = _harvest_proc(tiny_model, store, env=_vsae_env(VSAE_FAILPOINT="commit-mid:4"), extra=threads)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _harvest_proc(tiny_model, store, extra=threads).returncode == 0
    _assert_same_store(store, reference)


def test_resume_after_kill_at_a_random_moment(tiny_model, reference, tmp_path):
    store = tmp_path / "acts"
    exe = Path(sys.executable).with_name("vsae")
    proc = subprocess.Popen(
        [str(exe), "harvest", str(tiny_model), *ARGS, "--store", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (store / "tiny-neox" / "resid_post.1" / "activations").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _harvest_proc(tiny_model, store).returncode == 0
    _assert_same_store(store, reference)


def test_torchrun_harvest_gives_the_single_process_store(tiny_model, reference, tmp_path):
    store = tmp_path / "acts"
    proc = torchrun_vsae("harvest", tiny_model, *ARGS, "--store", store)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("wrote ") == 1  # rank 0 reports
    _assert_same_store(store, reference)


def test_text_ending_before_tokens_gives_the_same_trimmed_store_under_torchrun(tiny_model, tmp_path):
    """The last shard is short and the arrays are trimmed to what the text gave, in both modes."""
    from pydoc_data.topics import topics

    text = tmp_path / "small.txt"
    text.write_text(" ".join(topics[k] for k in sorted(topics)[:12]))
    args = [
        "--layer",
        "1",
        "--dataset",
        text,
        "--tokens",
        "100000",
        "--chunk-tokens",
        "256",
        "--shard-chunks",
        "2",
    ]
    proc = torchrun_vsae("harvest", tiny_model, *args, "--store", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr
    run_cli("harvest", tiny_model, *args, "--store", tmp_path / "one")
    table = open_table(str(tmp_path / "one"))
    assert 0 < table.n_tokens < 100_000 and table.n_tokens % 512 != 0
    assert int(table.group["committed"][:].sum()) == table.n_tokens
    _assert_same_store(tmp_path / "two", tmp_path / "one")


def test_killed_torchrun_harvest_resumes_in_one_process(tiny_model, reference, tmp_path):
    """Ranks write disjoint shards (rank r: s ≡ r mod 2), each marked on its own; any mix of runs resumes."""
    store = tmp_path / "acts"
    proc = torchrun_vsae(
        "harvest", tiny_model, *ARGS, "--store", store, env={"VSAE_FAILPOINT": "commit-end:2"}
    )
    assert proc.returncode != 0
    group = open_root(str(store), "r")["tiny-neox/resid_post.1"]
    done = set(np.flatnonzero(group["committed"][:]).tolist())
    assert {0, 2} <= done or {1, 3} <= done, done  # a rank's second commit is its shard 2 or 3
    assert done <= {0, 1, 2, 3}
    assert _harvest_proc(tiny_model, store).returncode == 0
    _assert_same_store(store, reference)


def test_complete_table_is_not_recomputed_and_force_redoes_it(tiny_model, reference, tmp_path):
    out = run_cli("harvest", tiny_model, *ARGS, "--store", reference).output
    assert "already complete" in out and "--force" in out
    before = open_table(str(reference)).attrs["fingerprint"]
    run_cli("harvest", tiny_model, *ARGS, "--store", reference, "--force")
    assert open_table(str(reference)).attrs["fingerprint"] == before  # deterministic redo


def test_disk_full_is_reported_and_the_store_resumes(tiny_model, reference, tmp_path):
    store = tmp_path / "acts"
    proc = _harvest_proc(tiny_model, store, env=_vsae_env(VSAE_FAILPOINT="commit-mid:3:enospc"))
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bar: one line
    assert last.startswith("error: disk full") and "re-run" in last
    assert _harvest_proc(tiny_model, store).returncode == 0
    _assert_same_store(store, reference)


def test_second_writer_is_refused_and_a_dead_lock_is_taken_over(tiny_model, tmp_path):
    store = tmp_path / "acts"
    with TableLock(str(store), "tiny-neox/resid_post.1"):  # held by this live process
        proc = _harvest_proc(tiny_model, store)
        assert proc.returncode == 2 and f"pid {os.getpid()}" in proc.stderr
    assert not (store / "tiny-neox" / "resid_post.1" / "activations").exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = store / "tiny-neox" / "resid_post.1.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": 0}))
    assert _harvest_proc(tiny_model, store).returncode == 0
    assert not lock.exists()


def test_different_config_says_which_field_differs(tiny_model, tmp_path):
    store = tmp_path / "acts"
    killed = _harvest_proc(tiny_model, store, env=_vsae_env(VSAE_FAILPOINT="commit-end:2"))
    assert killed.returncode == -signal.SIGKILL
    proc = _harvest_proc(tiny_model, store, extra=["--ctx-len", "64"])
    assert proc.returncode == 2 and "ctx_len=128" in proc.stderr and "--force" in proc.stderr
    assert open_table_partial_tokens(store) == 1024  # untouched: two commits of 512


def open_table_partial_tokens(store: Path) -> int:
    return json.loads(run_cli("info", store, "--json").output)[0]["progress"]["tokens"]


@pytest.mark.parametrize("case", ["empty", "column", "file_store", "unknown_site", "dtype", "level"])
def test_bad_harvest_input_leaves_nothing(tiny_model, tmp_path, case):
    store = tmp_path / "acts"
    args = ["harvest", tiny_model, "--layer", "1", "--tokens", "500", "--store", store]
    if case == "empty":
        (tmp_path / "empty.txt").write_text("")
        args += ["--dataset", tmp_path / "empty.txt"]
        expect = "no complete"
    elif case == "column":
        (tmp_path / "d.jsonl").write_text(json.dumps({"body": "hello " * 500}) + "\n")
        args += ["--dataset", tmp_path / "d.jsonl"]
        expect = "no text column 'text'"
    elif case == "file_store":
        store.write_text("not a store")
        args[-1] = store
        expect = "is a file"
    elif case == "unknown_site":
        args += ["--site", "resid_mid"]
        expect = "unknown site"
    elif case == "dtype":
        args += ["--dtype", "int4"]
        expect = "dtype"
    else:
        args += ["--compression-level", "12"]
        expect = "0..9"
    proc = run_vsae(*args, expect=2)
    text = proc.stderr.strip()
    assert text.startswith("error:") and expect in text and "\n" not in text, text
    if case != "file_store":
        assert not store.exists()


def test_text_sources_txt_jsonl_parquet_and_folder(tiny_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "The quick brown fox jumps over the lazy dog. " * 200
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(text)
    (folder / "b.jsonl").write_text(json.dumps({"text": text}) + "\n")
    pq.write_table(pa.table({"text": [text]}), folder / "c.parquet")
    for source in (folder / "a.txt", folder / "b.jsonl", folder / "c.parquet", folder):
        store = tmp_path / f"acts-{source.name}"
        run_cli(
            "harvest",
            tiny_model,
            "--layer",
            "0",
            "--dataset",
            source,
            "--tokens",
            "800",
            "--chunk-tokens",
            "256",
            "--store",
            store,
        )
        assert open_table(str(store)).n_tokens == 800


def test_several_layers_and_sites_in_one_pass_match_forward_hooks(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    store = tmp_path / "acts"
    run_cli(
        "harvest",
        tiny_model,
        "--layer",
        "0,1",
        "--site",
        "resid_pre,attn_out,mlp_out,resid_post",
        "--dataset",
        "pydoc",
        "--tokens",
        "1000",
        "--chunk-tokens",
        "256",
        "--store",
        store,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = torch.from_numpy(
        np.asarray(open_table(str(store), site="resid_post", layer=0).group["contexts"][1], dtype=np.int64)
    )
    captured = {}
    hooks = []
    for layer in (0, 1):
        block = model.gpt_neox.layers[layer]
        hooks.append(
            block.register_forward_pre_hook(
                lambda m, a, layer=layer: captured.__setitem__(("resid_pre", layer), a[0])
            )
        )
        hooks.append(
            block.attention.register_forward_hook(
                lambda m, a, o, layer=layer: captured.__setitem__(("attn_out", layer), o[0])
            )
        )
        hooks.append(
            block.mlp.register_forward_hook(
                lambda m, a, o, layer=layer: captured.__setitem__(("mlp_out", layer), o)
            )
        )
        hooks.append(
            block.register_forward_hook(
                lambda m, a, o, layer=layer: captured.__setitem__(("resid_post", layer), o)
            )
        )
    with torch.no_grad():
        model(ids[None])
    for (site, layer), expected in captured.items():
        table = open_table(str(store), site=site, layer=layer)
        assert table.provenance["hook_name"] == f"blocks.{layer}.hook_{site}"
        pos = table.doc_pos(0, table.n_tokens)
        rows = np.flatnonzero(pos[:, 1] == 1)
        got = table.read(int(rows[0]), int(rows[-1]) + 1)
        torch.testing.assert_close(got, expected[0, pos[rows, 2]].float(), rtol=1e-2, atol=1e-2)


@pytest.fixture
def s3_env():
    """A local S3 endpoint (moto) with a bucket `acts`; the environment a subprocess needs to reach it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    keys = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client(
        "s3",
        endpoint_url=url,
        **{k.lower(): v for k, v in keys.items() if k != "AWS_DEFAULT_REGION"},
        region_name="us-east-1",
    ).create_bucket(Bucket="acts")
    yield {**os.environ, **keys, "AWS_ENDPOINT_URL": url, "FSSPEC_S3_ENDPOINT_URL": url}
    server.stop()


def test_s3_store_harvest_info_and_train(tiny_model, reference, tmp_path, s3_env, monkeypatch):
    """s3:// through fsspec/s3fs against a local endpoint: the same store as on disk, readable for training."""
    url = "s3://acts/store"
    assert _harvest_proc(tiny_model, url, env=s3_env).returncode == 0
    exe = Path(sys.executable).with_name("vsae")
    info = subprocess.run([str(exe), "info", url, "--json"], capture_output=True, text=True, env=s3_env)
    assert json.loads(info.stdout)[0]["complete"]
    train = subprocess.run(
        [
            str(exe),
            "train",
            "--store",
            url,
            "--arch",
            "topk",
            "--dict-size",
            "128",
            "--k",
            "4",
            "--steps",
            "3",
            "--batch-size",
            "256",
            "--out",
            str(tmp_path / "ck"),
        ],
        capture_output=True,
        text=True,
        env=s3_env,
    )
    assert train.returncode == 0, train.stderr
    for key, value in s3_env.items():
        if key.startswith(("AWS_", "FSSPEC_")):
            monkeypatch.setenv(key, value)
    _assert_same_store(url, reference)


def test_gs_store_harvest_and_info(tiny_model, reference, monkeypatch):
    """gs:// through fsspec/gcsfs against a local GCS emulator: the same store as on disk."""
    from gcp_storage_emulator.server import create_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="acts")
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        url = "gs://acts/store"
        proc = _harvest_proc(tiny_model, url, env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(run_cli("info", url, "--json").output)[0]["complete"]
        _assert_same_store(url, reference)
    finally:
        server.stop()


def test_memory_store_through_fsspec(tiny_model):
    url = "memory://vsae-test/acts"
    run_cli(
        "harvest",
        tiny_model,
        "--layer",
        "1",
        "--dataset",
        "pydoc",
        "--tokens",
        "3000",
        "--chunk-tokens",
        "256",
        "--store",
        url,
    )
    info = json.loads(run_cli("info", url, "--json").output)[0]
    assert info["complete"] and info["tokens"] == 3000 and info["bytes_on_disk"] > 0
    table = open_table(url)
    assert table.read(0, 10).shape == (10, 64)


def test_fp16_overflow_is_an_error_not_inf():
    with pytest.raises(VsaeError, match="overflows float16"):
        to_storage(torch.tensor([[70000.0, 1.0]]), "float16")
    assert np.isfinite(to_storage(torch.tensor([[29000.0]]), "float16").astype(np.float32)).all()


def test_corrupted_chunk_is_reported_with_its_index(tiny_model, tmp_path):
    store = tmp_path / "acts"
    run_cli("harvest", tiny_model, *ARGS, "--store", store)
    shard = store / "tiny-neox" / "resid_post.1" / "activations" / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    data[50] ^= 0xFF
    shard.write_bytes(bytes(data))
    table = open_table(str(store))
    with pytest.raises(VsaeError, match="chunk 2 is corrupted"):
        table.read(512, 768)


def test_reader_shuffles_at_token_level(reference):
    table = open_table(str(reference))
    reader = ShuffledBatches(table, batch_size=256, seed=0, buffer_chunks=8)
    n_chunks = table.n_train_chunks
    chunk_of = np.arange(table.n_train) // table.chunk_tokens
    # Recover each batch row's source chunk by matching activations back to the store.
    acts = table.read(0, table.n_train)
    lookup = {tuple(acts[i, :4].tolist()): i for i in range(len(acts))}
    spreads, max_share = [], []
    for _ in range(6):
        batch = next(reader)
        idx = np.array([lookup[tuple(r[:4].tolist())] for r in batch])
        counts = np.bincount(chunk_of[idx], minlength=n_chunks)
        max_share.append(counts.max() / len(idx))
        spreads.append((counts > 0).sum())
    # A uniform draw of 256 tokens from a buffer of 6-8 chunks touches every one, none with much over 1/6.
    assert min(spreads) >= 5
    assert max(max_share) < 0.3


def test_reader_resumes_exactly(reference):
    table = open_table(str(reference))
    a = ShuffledBatches(table, batch_size=200, seed=3)
    for _ in range(7):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(5)]
    b = ShuffledBatches(table, batch_size=200, seed=3)
    b.load_state_dict(state)
    for e in expected:
        assert torch.equal(next(b), e)


def test_int8_mode_stores_per_token_scales_and_reads_back_close(tiny_model, reference, tmp_path):
    store = tmp_path / "acts8"
    run_cli("harvest", tiny_model, *ARGS, "--dtype", "int8", "--store", store)
    a, b = open_table(str(store)), open_table(str(reference))
    assert a.acts.dtype == np.int8 and a.group["scales"].shape == (a.n_tokens,)
    x8, x16 = a.read(0, 2000), b.read(0, 2000)
    rel = float((x8 - x16).norm() / x16.norm())
    assert rel < 0.02, rel  # 8-bit rounding error, a few per mille per element
    import fsspec

    table_dir = store / "tiny-neox" / "resid_post.1"
    fs = fsspec.filesystem("file")
    stored = fs.du(str(table_dir / "activations"), total=True) + fs.du(str(table_dir / "scales"), total=True)
    assert a.n_tokens * a.d * 4 / stored >= 3.5  # activation bytes vs fp32


@pytest.mark.parametrize("lost", [*FINISH, "all"])
def test_a_table_marked_complete_without_its_finish_is_refused_then_repaired(tmp_path, lost, capfd, caplog):
    """What a writer that set `complete` before the statistics left when killed between the two (the
    state is built directly: today's writer can no longer produce it): every reader names the missing
    attribute, and the same command finishes the table again, equal to the untouched one."""
    from conftest import run_main, synthetic_store

    whole = synthetic_store(tmp_path / "whole", tokens=6000)
    store = tmp_path / "store"
    shutil.copytree(whole, store)
    group = open_root(str(store), "a")["synthetic/resid_post.0"]
    attrs = dict(group.attrs)
    for key in FINISH if lost == "all" else [lost]:
        del attrs[key]
    group.attrs.put(attrs)
    named = "'n_tokens'" if lost == "all" else repr(lost)
    for argv in (("info", store, "--verify"), ("train", "--store", store, "--out", tmp_path / "o")):
        proc = run_main(capfd, *argv)
        assert proc.returncode == 2 and named in proc.stderr.splitlines()[-1], proc.stderr
    assert not (tmp_path / "o").exists()
    args = ["--d", "16", "--atoms", "48", "--active", "3", "--tokens", "6000", "--chunk-tokens", "1024"]
    proc = run_main(capfd, "synthetic", "--store", store, *args)
    assert proc.returncode == 0 and "finishing it again" in caplog.text, proc.stderr
    repaired, reference = open_table(str(store)), open_table(str(whole))
    assert repaired.attrs == reference.attrs
    for name in (*ARRAYS, "true_atoms"):
        assert np.array_equal(repaired.group[name][:], reference.group[name][:]), name
