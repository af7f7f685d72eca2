"""Hostile and unlucky input through the installed CLI: each case exits non-zero with one line on stderr
and no traceback, and every store and checkpoint that existed before is byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
from conftest import in_mount_namespace, needs_mount_namespace, read_only, run_cli, run_main


def folder_hash(path: Path) -> str:
    """Hash of every file's relative path and bytes below `path` (empty string if it does not exist)."""
    if not path.exists():
        return ""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic store, a second store of another width and a trained checkpoint (with step saves)."""
    root = tmp_path_factory.mktemp("reliability")
    store, other = root / "store", root / "other"
    run_cli("synthetic", "--store", store, "--d", "16", *SYNTHETIC)
    run_cli("synthetic", "--store", other, "--d", "24", *SYNTHETIC)
    args = ("--arch", "topk", "--k", "4", "--dict-size", "64", "--steps", "8", "--save-every", "4")
    run_cli("train", "--store", store, *args, "--out", root / "ckpt")
    return {"root": root, "store": store, "other": other, "ckpt": root / "ckpt" / "topk_64_k4_s0"}


def one_line_error(proc) -> str:
    """The one line on stderr (a report such as `vsae info`'s table may go to stdout before it)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING", "INFO"))]
    text = proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    return lines[0]


def sweep(tmp: Path, body: str) -> Path:
    path = tmp / "sweep.toml"
    path.write_text(body)
    return path


def train(world, *args):
    return ("train", "--store", world["store"], "--steps", "3", "--dict-size", "64", *args)


# (id, builds the argv from the world and a scratch folder, text the error must contain)
CASES = [
    ("lr-negative", lambda w, t: train(w, "--lr", "-1", "--out", t / "o"), "--lr"),
    ("lr-nan", lambda w, t: train(w, "--lr", "nan", "--out", t / "o"), "finite"),
    ("log-every-0", lambda w, t: train(w, "--log-every", "0", "--out", t / "o"), "--log-every"),
    ("resample-at-text", lambda w, t: train(w, "--resample-at", "abc", "--out", t / "o"), "--resample-at"),
    ("device-bogus", lambda w, t: train(w, "--device", "bogus", "--out", t / "o"), "--device"),
    ("batch-size-negative", lambda w, t: train(w, "--batch-size", "-1", "--out", t / "o"), "--batch-size"),
    (
        "dict-size-0",
        lambda w, t: ("train", "--store", w["store"], "--dict-size", "0", "--out", t / "o"),
        "d_sae",
    ),
    (
        "expansion-0",
        lambda w, t: ("train", "--store", w["store"], "--expansion", "0", "--out", t / "o"),
        "expansion",
    ),
    ("lr-not-a-number", lambda w, t: train(w, "--lr", "abc", "--out", t / "o"), "--lr"),
    ("unknown-flag", lambda w, t: train(w, "--no-such-flag", "--out", t / "o"), "no-such-flag"),
    (
        "bad-site",
        lambda w, t: train(w, "--arch", "vsae_topk", "--set", "selection_site=noise", "--out", t / "o"),
        "selection_site",
    ),
    (
        "sweep-k-string",
        lambda w, t: (
            "train",
            "--store",
            w["store"],
            "--out",
            t / "o",
            "--config",
            sweep(t, '[[sae]]\narch = "topk"\nk = "8"\n'),
        ),
        "k=",
    ),
    (
        "sweep-d-sae-string",
        lambda w, t: (
            "train",
            "--store",
            w["store"],
            "--out",
            t / "o",
            "--config",
            sweep(t, '[[sae]]\narch = "topk"\nd_sae = "big"\n'),
        ),
        "d_sae",
    ),
    (
        "sweep-sae-number",
        lambda w, t: ("train", "--store", w["store"], "--out", t / "o", "--config", sweep(t, "sae = 5\n")),
        "[[sae]]",
    ),
    (
        "sweep-steps-string",
        lambda w, t: (
            "train",
            "--store",
            w["store"],
            "--out",
            t / "o",
            "--config",
            sweep(t, '[train]\nsteps = "10"\n[[sae]]\narch = "topk"\n'),
        ),
        "steps",
    ),
    (
        "config-drops-arch",
        lambda w, t: (
            "train",
            "--store",
            w["store"],
            "--k",
            "3",
            "--out",
            t / "o",
            "--config",
            sweep(t, '[[sae]]\narch = "topk"\n'),
        ),
        "--k",
    ),
    (
        "resume-other-width",
        lambda w, t: (
            "train",
            "--store",
            w["other"],
            "--arch",
            "topk",
            "--k",
            "4",
            "--dict-size",
            "64",
            "--steps",
            "8",
            "--resume",
            "--out",
            w["ckpt"].parent,
        ),
        "d_in=16 but --resume was given d_in=24",
    ),
    (
        "resume-changed-lr",
        lambda w, t: (
            "train",
            "--store",
            w["store"],
            "--arch",
            "topk",
            "--k",
            "4",
            "--dict-size",
            "64",
            "--steps",
            "8",
            "--lr",
            "0.5",
            "--resume",
            "--out",
            w["ckpt"].parent,
        ),
        "lr=0.5",
    ),
    ("export-into-itself", lambda w, t: ("export", w["ckpt"], w["ckpt"]), "itself"),
    ("export-into-foreign-folder", lambda w, t: ("export", w["ckpt"], _foreign(t)), "did not export"),
    ("grad-clip-0", lambda w, t: train(w, "--grad-clip-norm", "0", "--out", t / "o"), "--grad-clip-norm"),
    (
        "grad-clip-text",
        lambda w, t: train(w, "--grad-clip-norm", "off", "--out", t / "o"),
        "--grad-clip-norm",
    ),
    ("betas-out-of-range", lambda w, t: train(w, "--betas", "0.9,1.5", "--out", t / "o"), "betas"),
    (
        "sweep-grad-clip-text",
        lambda w, t: (
            "train",
            "--store",
            w["store"],
            "--out",
            t / "o",
            "--config",
            sweep(t, '[train]\ngrad_clip_norm = "off"\n[[sae]]\narch = "topk"\n'),
        ),
        "--grad-clip-norm",
    ),
    (
        "harvest-empty-layer",
        lambda w, t: ("harvest", "smollm2-135m", "--layer", "", "--store", t / "s"),
        "--layer",
    ),
    (
        "harvest-empty-site",
        lambda w, t: ("harvest", "smollm2-135m", "--site", "", "--store", t / "s"),
        "--site",
    ),
    (
        "harvest-batch-size-negative",
        lambda w, t: ("harvest", "smollm2-135m", "--batch-size", "-1", "--store", t / "s"),
        "--batch-size",
    ),
    (
        "harvest-chunk-tokens-0",
        lambda w, t: ("harvest", "smollm2-135m", "--chunk-tokens", "0", "--store", t / "s"),
        "--chunk-tokens",
    ),
    ("import-over-a-checkpoint", lambda w, t: ("import", _lens(w, t), w["ckpt"]), "not empty"),
    ("synthetic-noise-nan", lambda w, t: ("synthetic", "--store", t / "s", "--noise", "nan"), "noise"),
    ("synthetic-active-nan", lambda w, t: ("synthetic", "--store", t / "s", "--active", "nan"), "active"),
    ("info-verify-missing-chunk", lambda w, t: ("info", _damaged(w, t, "missing"), "--verify"), "missing"),
    (
        "train-on-missing-chunk",
        lambda w, t: ("train", "--store", _damaged(w, t, "missing"), "--out", t / "o"),
        "missing",
    ),
    (
        "train-on-corrupted-statistics",
        lambda w, t: ("train", "--store", _damaged(w, t, "stats"), "--out", t / "o"),
        "chunk_sumsq is corrupted",
    ),
    (
        "store-under-a-file",
        lambda w, t: ("synthetic", "--store", _a_file(t) / "sub"),
        "cannot create the store",
    ),
    ("info-verify-flipped-byte", lambda w, t: ("info", _damaged(w, t, "flip"), "--verify"), "corrupted"),
    ("store-zarr-json-not-json", lambda w, t: ("info", _damaged(w, t, "zarr.json")), "zarr.json"),
    ("eval-convention-unknown", lambda w, t: ("eval", w["ckpt"], "--convention", "saelens"), "--convention"),
    (
        "eval-convention-no-ce",
        lambda w, t: ("eval", w["ckpt"], "--convention", "saebench", "--no-ce"),
        "--no-ce",
    ),
    ("eval-convention-synthetic", lambda w, t: ("eval", w["ckpt"], "--convention", "saebench"), "synthetic"),
    ("eval-ce-windows-0", lambda w, t: ("eval", w["ckpt"], "--ce-windows", "0"), "--ce-windows"),
    ("eval-cfg-not-json", lambda w, t: ("eval", _bad_ckpt(w, t, "cfg-text"), "--no-ce"), "cfg.json"),
    ("eval-cfg-not-object", lambda w, t: ("eval", _bad_ckpt(w, t, "cfg-list"), "--no-ce"), "cfg.json"),
    (
        "eval-truncated-weights",
        lambda w, t: ("eval", _bad_ckpt(w, t, "truncate"), "--no-ce"),
        "sae.safetensors",
    ),
    (
        "eval-bad-header-weights",
        lambda w, t: ("eval", _bad_ckpt(w, t, "header"), "--no-ce"),
        "sae.safetensors",
    ),
    ("eval-json-a-folder", lambda w, t: ("eval", w["ckpt"], "--json", _folder(t)), "is a folder"),
    (
        "eval-json-no-folder",
        lambda w, t: ("eval", w["ckpt"], "--json", t / "no" / "r.json"),
        "does not exist",
    ),
    (
        "eval-saebench-core-synthetic",
        lambda w, t: ("eval", w["ckpt"], "--saebench", "core"),
        "needs a language model",
    ),
    ("train-out-a-file", lambda w, t: train(w, "--out", _a_file(t)), "is a file"),
    ("eval-saebench-unknown", lambda w, t: ("eval", w["ckpt"], "--saebench", "absorb"), "choose from core"),
    (
        "eval-saebench-absorption-synthetic",
        lambda w, t: ("eval", w["ckpt"], "--saebench", "absorption"),
        "absorption needs a language model",
    ),
    (
        "eval-saebench-unknown-dataset",
        lambda w, t: ("eval", w["ckpt"], "--saebench", "meta_structure", "--saebench-datasets", "1_nope"),
        "unknown sae-probes dataset '1_nope'",
    ),
    (
        "eval-saebench-set-no-dot",
        lambda w, t: ("eval", w["ckpt"], "--saebench", "meta_structure", "--saebench-set", "k=3"),
        "eval.setting=value",
    ),
    (
        "eval-saebench-set-unknown-eval",
        lambda w, t: ("eval", w["ckpt"], "--saebench", "meta_structure", "--saebench-set", "ravel.k=3"),
        "settable evals are",
    ),
    (
        "eval-saebench-set-unknown-setting",
        lambda w, t: (
            "eval",
            w["ckpt"],
            "--saebench",
            "meta_structure",
            "--saebench-set",
            "meta_structure.kk=3",
        ),
        "no such setting",
    ),
    (
        "resume-changed-set",
        lambda w, t: (
            "train",
            "--store",
            w["store"],
            "--arch",
            "topk",
            "--dict-size",
            "64",
            "--steps",
            "8",
            "--set",
            "k=8",
            "--resume",
            "--out",
            w["ckpt"].parent,
        ),
        "k=4, not 8",
    ),
    (
        "synthetic-over-complete-table",
        lambda w, t: ("synthetic", "--store", w["store"], "--d", "16", *SYNTHETIC),
        "already complete",
    ),
    (
        "import-lens-no-architecture",
        lambda w, t: ("import", _lens(w, t, "no-arch"), t / "o"),
        "names no architecture",
    ),
    (
        "import-lens-d-in-text",
        lambda w, t: ("import", _lens(w, t, "d_in"), t / "o"),
        "d_in must be a positive integer",
    ),
    (
        "import-lens-d-sae-negative",
        lambda w, t: ("import", _lens(w, t, "d_sae"), t / "o"),
        "d_sae must be a positive integer",
    ),
    (
        "import-lens-k-not-int",
        lambda w, t: ("import", _lens(w, t, "k"), t / "o"),
        "k must be a positive integer",
    ),
    (
        "store-array-json-truncated",
        lambda w, t: ("info", _damaged(w, t, "array-json-truncated")),
        "activations/zarr.json is damaged",
    ),
    (
        "train-on-array-json-truncated",
        lambda w, t: ("train", "--store", _damaged(w, t, "array-json-truncated"), "--out", t / "o"),
        "activations/zarr.json is damaged",
    ),
    (
        "store-array-json-not-utf8",
        lambda w, t: ("info", _damaged(w, t, "array-json-not-utf8"), "--verify"),
        "activations/zarr.json is damaged (UnicodeDecodeError)",
    ),
    (
        "info-verify-damaged-attributes",
        lambda w, t: ("info", _damaged(w, t, "attrs"), "--verify"),
        "damaged 'n_train_chunks'",
    ),
    (
        "train-on-damaged-attributes",
        lambda w, t: ("train", "--store", _damaged(w, t, "attrs"), "--out", t / "o"),
        "damaged 'n_train_chunks'",
    ),
    (
        "info-config-attribute-null",
        lambda w, t: ("info", _damaged(w, t, "config-null")),
        "damaged 'config'",
    ),
]
SYNTHETIC = ("--atoms", "32", "--tokens", "12000", "--chunk-tokens", "1024")


def _foreign(tmp: Path) -> Path:
    folder = tmp / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    return folder


def _lens(world, tmp: Path, damage: str | None = None) -> Path:
    """The world's topk SAE exported to SAELens, its cfg.json damaged as asked."""
    run_cli("export", world["ckpt"], tmp / "lens")
    cfg_file = tmp / "lens" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    if damage == "no-arch":
        del cfg["architecture"]  # a top-k SAE (it has k) would be read as standard
    elif damage == "d_in":
        cfg["d_in"] = "many"
    elif damage == "d_sae":
        cfg["d_sae"] = -3
    elif damage == "k":
        cfg["k"] = 2.5
    cfg_file.write_text(json.dumps(cfg))
    return tmp / "lens"


def _folder(tmp: Path) -> Path:
    (tmp / "a-folder").mkdir()
    return tmp / "a-folder"


def _a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("not a folder")
    return tmp / "afile"


def _damaged(world, tmp: Path, how: str) -> Path:
    store = tmp / "damaged"
    shutil.copytree(world["store"], store)
    table = store / "synthetic" / "resid_post.0"
    if how == "missing":
        (table / "activations" / "c" / "1" / "0").unlink()
    elif how == "stats":
        obj = table / "chunk_sumsq" / "c" / "0"
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF
        obj.write_bytes(data)
    elif how == "flip":
        obj = table / "activations" / "c" / "1" / "0"
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF
        obj.write_bytes(data)
    elif how == "array-json-truncated":
        meta = table / "activations" / "zarr.json"
        meta.write_bytes(meta.read_bytes()[:100])
    elif how == "array-json-not-utf8":
        meta = table / "activations" / "zarr.json"
        data = bytearray(meta.read_bytes())
        data[20] = 0xFF
        meta.write_bytes(data)
    elif how in ("attrs", "config-null"):
        meta = table / "zarr.json"
        doc = json.loads(meta.read_text())
        if how == "attrs":
            doc["attributes"]["n_train_chunks"] = "seven"
        else:
            doc["attributes"]["config"] = None
        meta.write_text(json.dumps(doc))
    else:
        (table / "zarr.json").write_text("{not json")
    return store


def _bad_ckpt(world, tmp: Path, how: str) -> Path:
    ckpt = tmp / "ckpt"
    shutil.copytree(world["ckpt"], ckpt)
    if how == "cfg-text":
        (ckpt / "cfg.json").write_text("{oops")
    elif how == "cfg-list":
        (ckpt / "cfg.json").write_text("[1, 2]")
    elif how == "truncate":
        weights = ckpt / "sae.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        weights = ckpt / "sae.safetensors"
        weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    return ckpt


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, tmp_path, case, capfd):
    _, argv, needle = case
    before = {k: folder_hash(world[k]) for k in ("store", "other", "ckpt")}
    assert all(before.values())  # the world exists: a case can only pass by leaving it intact
    args = argv(world, tmp_path)
    scratch = {p: folder_hash(p) for p in map(Path, args) if p.is_absolute() and p.exists()}
    proc = run_main(capfd, *args, cwd=tmp_path)  # the console entry point, in process
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert needle in line, line
    assert {k: folder_hash(world[k]) for k in before} == before
    assert {p: folder_hash(p) for p in scratch} == scratch  # damaged copies and foreign folders untouched
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_malicious_trainer_state_never_runs(world, tmp_path, capfd):
    """A crafted trainer_state.pt is refused by the weights-only unpickler: its payload never runs."""
    out = tmp_path / "runs"
    shutil.copytree(world["ckpt"].parent, out)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    (out / "topk_64_k4_s0" / "trainer_state.pt").write_bytes(pickle.dumps({"model": Payload()}))
    args = (
        "train",
        "--store",
        world["store"],
        "--arch",
        "topk",
        "--k",
        "4",
        "--dict-size",
        "64",
        "--steps",
        "8",
    )
    proc = run_main(capfd, *args, "--resume", "--out", out, cwd=tmp_path)
    assert proc.returncode == 2 and "trainer state" in one_line_error(proc)
    assert not marker.exists()


def test_export_twice_replaces_only_its_own_files(world, tmp_path):
    out = tmp_path / "sl"
    run_cli("export", world["ckpt"], out)
    first = folder_hash(out)
    run_cli("export", world["ckpt"], out)
    assert folder_hash(out) == first and {p.name for p in out.iterdir()} == {
        "cfg.json",
        "sae_weights.safetensors",
    }
    assert json.loads((out / "cfg.json").read_text())["metadata"]["vsae_architecture"] == "topk"


def _train_args(store, out, steps=12):
    return (
        "train",
        "--store",
        store,
        "--arch",
        "vsae_topk",
        "--k",
        "4",
        "--dict-size",
        "64",
        "--steps",
        str(steps),
        "--batch-size",
        "256",
        "--save-every",
        "4",
        "--out",
        out,
    )


def train_with_failpoint(world, tmp_path: Path, failpoint: str, out: Path | None = None):
    """`vsae train` (vsae_topk, 12 steps, saves every 4) in a subprocess with VSAE_FAILPOINT set."""
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("vsae")
    args = [str(exe), *map(str, _train_args(world["store"], out or tmp_path / "o"))]
    env = {**os.environ, "VSAE_FAILPOINT": failpoint}
    return subprocess.run(
        args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, preexec_fn=_terminal_signals
    )


def _terminal_signals() -> None:
    """The child starts with SIGINT as a terminal's foreground process has it: unblocked, default handling.
    Signal masks and ignored dispositions are inherited across exec, and a library earlier in this pytest
    process may leave either changed; Python then installs no KeyboardInterrupt handler in the child."""
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _final_state(run: Path) -> dict:
    import torch

    return torch.load(run / "trainer_state.pt", weights_only=True)


@pytest.mark.parametrize("failpoint", ["train_step:7", "checkpoint_write:2"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(world, tmp_path, failpoint):
    """SIGKILL after step 7 (only checkpoints/step_4 exists) or half-way through writing step_8's
    checkpoint; --resume continues from the newest complete checkpoint to the same weights."""
    from conftest import assert_same_trainer_state

    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(*_train_args(world["store"], full))
    killed = train_with_failpoint(world, tmp_path, failpoint, out=part)
    assert killed.returncode == -9
    run = part / "vsae_topk_64_k4_s0"
    assert not (run / "cfg.json").exists() and (run / "checkpoints" / "step_4" / "trainer_state.pt").exists()
    run_cli(*_train_args(world["store"], part), "--resume")
    a, b = _final_state(full / "vsae_topk_64_k4_s0"), _final_state(run)
    assert_same_trainer_state(a, b)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the killed run's extra log lines were dropped, none doubled


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_last(world, tmp_path):
    proc = train_with_failpoint(world, tmp_path, "checkpoint_write:2:enospc")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after the run's own progress lines
    assert last.startswith("error: disk full"), proc.stderr
    run = tmp_path / "o" / "vsae_topk_64_k4_s0"
    assert (run / "checkpoints" / "step_4" / "trainer_state.pt").exists()
    assert not (run / "checkpoints" / "step_8").exists()
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


def test_ctrl_c_says_interrupted_and_keeps_checkpoints(world, tmp_path):
    proc = train_with_failpoint(world, tmp_path, "train_step:6:sigint")
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted"), proc.stderr
    assert (tmp_path / "o" / "vsae_topk_64_k4_s0" / "checkpoints" / "step_4" / "trainer_state.pt").exists()


JSONL = {
    "broken-line": ('{"text": "fine"}\n{"text": "cut off\n', "not valid JSON"),
    "binary": (b"\xff\xfe\x00garbage\x80\n", "not UTF-8"),
    "non-string-text": ('{"text": "fine"}\n{"text": 42}\n', "holds a int"),
    "not-an-object": ('{"text": "fine"}\n[1, 2]\n', "no text column"),
}


@pytest.mark.parametrize("case", list(JSONL))
def test_bad_jsonl_names_the_file_and_line(tiny_model, tmp_path, case, capfd):
    body, needle = JSONL[case]
    data = tmp_path / "docs.jsonl"
    data.write_bytes(body if isinstance(body, bytes) else body.encode())
    args = (
        "harvest",
        tiny_model,
        "--layer",
        "1",
        "--dataset",
        data,
        "--tokens",
        "64",
        "--store",
        tmp_path / "s",
    )
    proc = run_main(capfd, *args, cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert needle in line and "docs.jsonl" in line, line
    assert not (tmp_path / "s").exists()


def test_model_folder_that_is_not_a_model(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    proc = run_main(capfd, "harvest", tmp_path / "empty", "--store", tmp_path / "s", cwd=tmp_path)
    assert proc.returncode == 2
    assert "could not load model" in one_line_error(proc)
    assert not (tmp_path / "s").exists()


def test_clipping_can_be_turned_off_from_the_flag_and_the_sweep_file(world, tmp_path):
    """--grad-clip-norm none and grad_clip_norm = "none" train alike, and differently from clipping at 1e-3."""
    from safetensors.torch import load_file

    base = (
        "train",
        "--store",
        world["store"],
        "--arch",
        "topk",
        "--k",
        "4",
        "--dict-size",
        "64",
        "--steps",
        "6",
    )
    run_cli(*base, "--grad-clip-norm", "none", "--lr", "0.01", "--out", tmp_path / "off")
    run_cli(*base, "--grad-clip-norm", "0.001", "--lr", "0.01", "--out", tmp_path / "on")
    file = sweep(
        tmp_path,
        '[train]\nsteps = 6\nlr = 0.01\ngrad_clip_norm = "none"\n[[sae]]\narch = "topk"\nk = 4\nd_sae = 64\n',
    )
    run_cli("train", "--store", world["store"], "--config", file, "--out", tmp_path / "sw")
    w = {
        k: load_file(tmp_path / k / "topk_64_k4_s0" / "sae.safetensors")["W_enc"] for k in ("off", "on", "sw")
    }
    assert (w["off"] - w["sw"]).abs().max() == 0
    assert (w["off"] - w["on"]).abs().max() > 1e-4
    cfg = json.loads((tmp_path / "sw" / "topk_64_k4_s0" / "cfg.json").read_text())
    assert cfg["training"]["grad_clip_norm"] is None


def test_kill_9_during_export_loses_nothing(world, tmp_path):
    """Killed half-way through replacing an earlier export: the checkpoint and the earlier export are intact,
    and the same command then finishes."""
    import os
    import subprocess
    import sys

    out = tmp_path / "lens"
    run_cli("export", world["ckpt"], out)
    earlier, ckpt = folder_hash(out), folder_hash(world["ckpt"])
    exe = Path(sys.executable).with_name("vsae")
    env = {**os.environ, "VSAE_FAILPOINT": "export_write:1"}
    killed = subprocess.run([str(exe), "export", str(world["ckpt"]), str(out)], env=env, capture_output=True)
    assert killed.returncode == -9
    assert folder_hash(out) == earlier and folder_hash(world["ckpt"]) == ckpt
    run_cli("export", world["ckpt"], out)
    assert folder_hash(out) == earlier  # the export is deterministic


def test_a_run_stopped_by_a_non_finite_loss_leaves_no_empty_out_folder(world, tmp_path, capfd):
    proc = run_main(capfd, *train(world, "--arch", "standard", "--lr", "1e30", "--out", tmp_path / "o"))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: non-finite loss"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def _ro_eval(world, tmp: Path) -> tuple[Path, str]:
    ckpt = tmp / "ckpt"
    shutil.copytree(world["ckpt"], ckpt)
    return ckpt, f"vsae eval '{ckpt}' --no-ce"


def _ro_train_out(world, tmp: Path) -> tuple[Path, str]:
    out = tmp / "out"
    out.mkdir()
    return out, f"vsae train --store '{world['store']}' --steps 3 --dict-size 64 --wandb p --out '{out}'"


def _ro_store(world, tmp: Path) -> tuple[Path, str]:
    store = tmp / "store"
    shutil.copytree(world["store"], store)
    return store, f"vsae synthetic --store '{store}' --d 24 --force {' '.join(SYNTHETIC)}"


READ_ONLY = {
    "eval-read-only-checkpoint": (_ro_eval, "", "cannot write eval.json"),
    "eval-read-only-checkpoint-wandb": (_ro_eval, " --wandb p", "cannot write eval.json"),
    "train-wandb-read-only-out": (_ro_train_out, "", "cannot write checkpoints"),
    "synthetic-read-only-store": (_ro_store, "", "Read-only file system"),
}


@needs_mount_namespace
@pytest.mark.parametrize("case", list(READ_ONLY))
def test_a_read_only_location_is_one_line_and_changes_nothing(world, tmp_path, case):
    build, extra, needle = READ_ONLY[case]
    target, command = build(world, tmp_path)
    before = folder_hash(target)
    proc = in_mount_namespace(read_only(target), command + extra, env={"WANDB_MODE": "offline"})
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert needle in line, line
    assert folder_hash(target) == before


@needs_mount_namespace
def test_harvest_into_a_store_on_a_read_only_mount(store, tiny_model, tmp_path):
    from conftest import HARVEST_ARGS

    copy = tmp_path / "acts"
    shutil.copytree(store, copy)
    before = folder_hash(copy)
    command = f"vsae harvest '{tiny_model}' {' '.join(HARVEST_ARGS)} --store '{copy}'"
    proc = in_mount_namespace(read_only(copy), command)
    assert proc.returncode == 2, proc.stderr
    assert "Read-only file system" in one_line_error(proc)
    assert folder_hash(copy) == before


@needs_mount_namespace
def test_a_real_full_disk_during_a_checkpoint_keeps_the_last_one_whole(world, tmp_path):
    """A 1 MiB tmpfs takes the step-3 checkpoint (≈ 0.55 MB at F = 1024, d = 16) but not the final one:
    torch's writer fails (a RuntimeError, not an OSError). One line; step_3 whole; nothing half-written."""
    mnt, kept = tmp_path / "mnt", tmp_path / "kept"
    mnt.mkdir()
    args = f"--store '{world['store']}' --arch topk --k 4 --dict-size 1024 --steps 6 --save-every 3"
    proc = in_mount_namespace(
        f"mount -t tmpfs -o size=1m tmpfs '{mnt}'",
        f"vsae train {args} --out '{mnt}/o'; rc=$?; cp -a '{mnt}/o' '{kept}'; exit $rc",
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: disk full while writing") and "--resume" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    run = kept / "topk_1024_k4_s0"
    left = sorted(str(p.relative_to(kept)) for p in kept.rglob("*"))
    assert left == [
        "topk_1024_k4_s0",
        "topk_1024_k4_s0/checkpoints",
        "topk_1024_k4_s0/checkpoints/step_3",
        "topk_1024_k4_s0/checkpoints/step_3/cfg.json",
        "topk_1024_k4_s0/checkpoints/step_3/sae.safetensors",
        "topk_1024_k4_s0/checkpoints/step_3/trainer_state.pt",
        "topk_1024_k4_s0/metrics.jsonl",
    ], left
    # the kept checkpoint resumes to the end where there is room
    run_cli("train", *args.replace("'", "").split(), "--resume", "--out", kept)
    assert (run / "cfg.json").exists()


def test_saebench_all_runs_what_can_run_and_lists_the_rest(world, tmp_path, capfd):
    """A synthetic checkpoint has no language model: `all` skips core and says so (asked by name: an error,
    in the table above)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(world["ckpt"], ckpt)
    steps = "meta_structure.train_steps=20"  # the one eval here that needs no language model: it runs
    proc = run_main(capfd, "eval", ckpt, "--no-ce", "--saebench", "all", "--saebench-set", steps)
    assert proc.returncode == 0, proc.stderr
    text = " ".join((proc.stdout + proc.stderr).split())
    for name in ("core", "absorption", "sparse_probing_sae_probes", "mdl"):
        assert f"SAE Bench skipped {name} for" in text, name
    assert "needs a language model" in text and "SAE Bench skipped ravel: needs hub datasets" in text
    result = json.loads((ckpt / "eval.json").read_text())
    assert result["saebench_skipped"]["core"].startswith("needs")
    assert 0 < result["saebench/meta_structure/decoder_fve"] <= 1
    assert (ckpt / "saebench_meta_structure.json").exists()
