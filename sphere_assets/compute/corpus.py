"""Corpus reading, normalization and sharding (pure: no Dagster).

Sources yield :class:`SourceRecord`s in a deterministic order; :func:`normalize_record` turns one
into an article row or a reject reason; :func:`shard_of` assigns it to a shard; :class:`ShardSplitter`
streams rows of the requested shards into per-shard sinks, dropping duplicate ids and counting
everything, so that for every shard ``articles_in == rows_out + sum(rejects)``.

Normalization rules (the only changes made to text):
* bytes are decoded as strict UTF-8 (a leading BOM is dropped); undecodable bytes -> reject
  ``invalid_utf8``; str with lone surrogates (not encodable) -> reject ``invalid_utf8``;
* text is put in Unicode NFC, so canonically equivalent articles have identical bytes;
* whitespace-only text -> reject ``empty``; more than ``max_article_bytes`` UTF-8 bytes after
  normalization -> reject ``oversize`` (never truncated);
* a record without an id -> ``missing_id``; without a text field -> ``missing_text``; a jsonl
  line that is not a JSON object -> ``invalid_json``; a repeated id in the same source ->
  ``duplicate_id`` (the first occurrence wins).
"""

from __future__ import annotations

import glob
import json
import os
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mmh3
import pyarrow as pa

from sphere_assets.contracts import RAW_ARTICLES_SCHEMA

REJECT_REASONS = (
    "missing_id",
    "missing_text",
    "invalid_json",
    "invalid_utf8",
    "empty",
    "oversize",
    "duplicate_id",
)
BUNDLED_SOURCE = "bundled:pydoc_data.topics"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".py")


@dataclass(frozen=True)
class SourceRecord:
    locator: str  # where the record sits in its source (stable): used to shard id-less rejects
    article_id: str | None
    title: str | None
    text: str | bytes | None
    source: str
    url: str | None = None
    problem: str | None = None  # a reject reason the reader already knows (e.g. invalid_json)


@dataclass
class ArticleRow:
    article_id: str
    title: str
    text: str
    source: str
    n_bytes: int
    url: str | None


def shard_of(key: str, n_shards: int) -> int:
    """Stable shard: MurmurHash3 x64-128 (seed 0) low 64 bits of the UTF-8 key, mod n_shards."""
    return mmh3.hash64(key.encode("utf-8", "surrogatepass"), seed=0, signed=False)[0] % n_shards


def normalize_record(rec: SourceRecord, max_article_bytes: int) -> ArticleRow | str:
    """An ArticleRow, or the reject reason (one of REJECT_REASONS)."""
    if rec.problem:
        return rec.problem
    if rec.article_id is None or str(rec.article_id) == "":
        return "missing_id"
    if rec.text is None:
        return "missing_text"
    text = rec.text
    if isinstance(text, bytes | bytearray | memoryview):
        data = bytes(text)
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        if data.isascii():
            # ASCII is valid UTF-8 and already NFC: one cheap decode, length is the byte length.
            text, encoded_len = data.decode("ascii"), len(data)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                return "invalid_utf8"
            encoded_len = None
    elif isinstance(text, str):
        encoded_len = len(text) if text.isascii() else None
    else:
        return "missing_text"
    if encoded_len is None:
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        try:
            encoded_len = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return "invalid_utf8"
    if not text or text.isspace():  # isspace() inspects in place; strip() would copy the text
        return "empty"
    if encoded_len > max_article_bytes:
        return "oversize"
    title = (
        rec.title if isinstance(rec.title, str) else ("" if rec.title is None else str(rec.title))
    )
    return ArticleRow(str(rec.article_id), title, text, rec.source, encoded_len, rec.url)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def bundled_records() -> Iterator[SourceRecord]:
    """The CPython documentation topics shipped with every Python (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield SourceRecord(
            locator=f"pydoc_data.topics:{key}",
            article_id=f"pydoc:{key}",
            title=key,
            text=topics[key],
            source=BUNDLED_SOURCE,
        )


def bundled_total_bytes() -> int:
    from pydoc_data.topics import topics

    return sum(len(v.encode("utf-8", "surrogatepass")) for v in topics.values())


def expand_glob(pattern: str) -> list[str]:
    """Files matching ``pattern`` (``**`` recurses), sorted by path for a stable order.

    Plain strings, not Path objects: on tens of thousands of files pathlib's parsing and
    comparisons cost more than reading the files.
    """
    return sorted(
        p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)
    )


def glob_root(pattern: str) -> Path:
    """The directory part of a glob before its first wildcard: ids are paths relative to it."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    return root if root.is_dir() else root.parent


@dataclass(frozen=True)
class FieldNames:
    id_field: str = "id"
    title_field: str = "title"
    text_field: str = "text"
    url_field: str = "url"


def _text_file_record(path: str, rel: str) -> SourceRecord:
    with open(path, "rb") as fh:
        data = fh.read()
    title = os.path.splitext(os.path.basename(path))[0]
    return SourceRecord(locator=rel, article_id=rel, title=title, text=data, source=path)


def _mapping_record(obj: dict, fields: FieldNames, locator: str, source: str) -> SourceRecord:
    raw_id = obj.get(fields.id_field)
    return SourceRecord(
        locator=locator,
        article_id=None if raw_id is None else str(raw_id),
        title=obj.get(fields.title_field),
        text=obj.get(fields.text_field),
        source=source,
        url=obj.get(fields.url_field),
    )


def _jsonl_records(path: str, rel: str, fields: FieldNames) -> Iterator[SourceRecord]:
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            locator = f"{rel}:{lineno}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                obj = None
            if not isinstance(obj, dict):
                yield SourceRecord(locator, None, None, None, str(path), problem="invalid_json")
                continue
            yield _mapping_record(obj, fields, locator, str(path))


def _parquet_records(path: str, rel: str, fields: FieldNames) -> Iterator[SourceRecord]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    for required in (fields.id_field, fields.text_field):
        if required not in names:
            raise KeyError(
                f"corpus file {path}: field '{required}' is not a column "
                f"(columns: {sorted(names)}); set the corpus id_field/text_field config"
            )
    cols = [
        c
        for c in (fields.id_field, fields.title_field, fields.text_field, fields.url_field)
        if c in names
    ]
    row = 0
    for batch in pf.iter_batches(batch_size=2048, columns=cols):
        for obj in batch.to_pylist():
            yield _mapping_record(obj, fields, f"{rel}:{row}", str(path))
            row += 1


def file_records(pattern: str, fields: FieldNames = FieldNames()) -> Iterator[SourceRecord]:
    """Articles from local files: txt/md/rst/py = one article per file; jsonl/parquet = one per row."""
    paths = expand_glob(pattern)
    if not paths:
        raise FileNotFoundError(f"corpus source 'files': no files match {pattern!r}")
    root = str(glob_root(pattern))
    prefix = root.rstrip(os.sep) + os.sep if root not in ("", ".") else ""
    for path in paths:
        rel = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        yield from records_of_file(path, rel, fields)


def records_of_file(
    path: str, rel: str, fields: FieldNames = FieldNames()
) -> Iterator[SourceRecord]:
    """The records of one file; ``rel`` (its path relative to the glob root) is the text-file id."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
        yield from _jsonl_records(path, rel, fields)
    elif suffix == ".parquet":
        yield from _parquet_records(path, rel, fields)
    elif suffix in TEXT_SUFFIXES:
        yield _text_file_record(path, rel)
    else:
        raise ValueError(
            f"corpus source 'files': unsupported file type {suffix!r} for {path} "
            f"(supported: {', '.join(TEXT_SUFFIXES + ('.jsonl', '.parquet'))})"
        )


def files_total_bytes(pattern: str) -> int:
    return sum(os.path.getsize(p) for p in expand_glob(pattern))


def hf_records(
    name: str,
    config: str | None,
    split: str,
    fields: FieldNames = FieldNames(),
    data_files: str | list[str] | None = None,
    limit: int | None = None,
) -> Iterator[SourceRecord]:
    """Any Hugging Face dataset, streamed: ``datasets.load_dataset(name, config, split, streaming=True)``.

    Wikipedia: ``name="wikimedia/wikipedia", config="20231101.en"``; FineWeb-Edu:
    ``name="HuggingFaceFW/fineweb-edu", config="sample-10BT"``. Local files work through the
    generic builders (``name="parquet"`` or ``"json"`` with ``data_files``).
    """
    import datasets

    kwargs = {"split": split, "streaming": True}
    if data_files:
        kwargs["data_files"] = data_files
    ds = (
        datasets.load_dataset(name, config, **kwargs)
        if config
        else datasets.load_dataset(name, **kwargs)
    )
    columns = set(ds.column_names or []) if getattr(ds, "column_names", None) else None
    if columns is not None and fields.text_field not in columns:
        raise KeyError(
            f"corpus source 'hf' {name}: field '{fields.text_field}' is not a column (columns: {sorted(columns)})"
        )
    source = f"hf:{name}" + (f"/{config}" if config else "") + f"/{split}"
    for i, obj in enumerate(ds):
        if limit is not None and i >= limit:
            break
        yield _mapping_record(obj, fields, f"{source}:{i}", source)


# ---------------------------------------------------------------------------------------------
# Splitting a record stream into shards
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardStats:
    articles_in: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    rejects: Counter = field(default_factory=Counter)

    def check(self) -> None:
        if self.articles_in != self.rows_out + sum(self.rejects.values()):
            raise AssertionError(f"accounting broken: {self}")


class ShardSplitter:
    """Routes normalized rows of the wanted shards to ``flush(shard, rows)`` in bounded batches.

    Memory holds at most ``batch_rows`` rows (or ``batch_bytes`` of text) per wanted shard plus
    the set of ids seen, which is what duplicate detection needs.
    """

    def __init__(
        self,
        n_shards: int,
        wanted: Iterable[int],
        flush: Callable[[int, list[ArticleRow]], None],
        max_article_bytes: int,
        batch_rows: int = 2048,
        batch_bytes: int = 32 << 20,
    ):
        self.n_shards = n_shards
        self.wanted = set(wanted)
        self.flush_fn = flush
        self.max_article_bytes = max_article_bytes
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self.stats = {s: ShardStats() for s in sorted(self.wanted)}
        self._buffers: dict[int, list[ArticleRow]] = {s: [] for s in self.wanted}
        self._buffer_bytes: dict[int, int] = dict.fromkeys(self.wanted, 0)
        self._seen: dict[int, set[str]] = {s: set() for s in self.wanted}
        self.records_seen = 0
        self.source_bytes_seen = 0

    def add(self, rec: SourceRecord) -> None:
        self.records_seen += 1
        if isinstance(rec.text, str | bytes):
            self.source_bytes_seen += len(rec.text)
        key = rec.article_id if rec.article_id not in (None, "") else rec.locator
        shard = shard_of(str(key), self.n_shards)
        if shard not in self.wanted:
            return
        stats = self.stats[shard]
        stats.articles_in += 1
        result = normalize_record(rec, self.max_article_bytes)
        if isinstance(result, str):
            stats.rejects[result] += 1
            return
        if result.article_id in self._seen[shard]:
            stats.rejects["duplicate_id"] += 1
            return
        self._seen[shard].add(result.article_id)
        stats.rows_out += 1
        stats.bytes_out += result.n_bytes
        buf = self._buffers[shard]
        buf.append(result)
        self._buffer_bytes[shard] += result.n_bytes
        if len(buf) >= self.batch_rows or self._buffer_bytes[shard] >= self.batch_bytes:
            self._flush(shard)

    def _flush(self, shard: int) -> None:
        if self._buffers[shard]:
            self.flush_fn(shard, self._buffers[shard])
            self._buffers[shard] = []
            self._buffer_bytes[shard] = 0

    def finish(self) -> dict[int, ShardStats]:
        for shard in sorted(self.wanted):
            self._flush(shard)
            self.stats[shard].check()
        return self.stats


class ProgressMeter:
    """Rate-limited progress lines: count, MB, rate, ETA (when the total is known)."""

    def __init__(self, log: Callable[[str], None], total_bytes: int | None, every_s: float = 5.0):
        self.log = log
        self.total_bytes = total_bytes
        self.every_s = every_s
        self.start = time.perf_counter()
        self.last = self.start
        self.records = 0
        self.nbytes = 0

    def advance(self, records: int, nbytes: int) -> None:
        """Count ``records`` more (``nbytes`` bytes) and log if the interval has passed."""
        self.records += records
        self.nbytes += nbytes
        self.maybe_log(self.records, self.nbytes)

    def maybe_log(self, records: int, nbytes: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = nbytes / elapsed
        msg = f"{records} records, {nbytes / 1e6:.1f} MB in {elapsed:.1f}s ({records / elapsed:.0f} rec/s, {rate / 1e6:.1f} MB/s)"
        if self.total_bytes and rate > 0:
            remaining = max(self.total_bytes - nbytes, 0) / rate
            msg += f", {100 * nbytes / self.total_bytes:.0f}% done, ETA {remaining:.0f}s"
        self.log(msg)


def rows_to_table(rows: list[ArticleRow]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "article_id": [r.article_id for r in rows],
            "title": [r.title for r in rows],
            "text": [r.text for r in rows],
            "source": [r.source for r in rows],
            "n_bytes": [r.n_bytes for r in rows],
            "url": [r.url for r in rows],
        },
        schema=RAW_ARTICLES_SCHEMA,
    )


@dataclass
class IngestResult:
    stats: dict[int, ShardStats]
    records_seen: int
    source_bytes_seen: int
    previews: dict[int, pa.Table]


def write_shards(
    records: Iterable[SourceRecord],
    store,
    asset: str,
    n_shards: int,
    keys: list[str],
    max_article_bytes: int,
    progress: ProgressMeter | None = None,
) -> IngestResult:
    """Stream ``records`` into the ``keys`` partitions of ``asset`` in ``store`` (a Warehouse).

    Every partition is staged and swapped into place only after the whole source was read, so a
    failure anywhere leaves all previous partitions as they were.
    """
    from contextlib import ExitStack

    from sphere_resources.store import BackgroundTableWriter

    previews: dict[int, pa.Table] = {}
    with ExitStack() as stack:
        streams = {}
        for key in keys:
            w = stack.enter_context(store.partition_writer(asset, key))
            streams[int(key)] = stack.enter_context(w.table_stream())
        background = BackgroundTableWriter()
        stack.callback(background.close)

        def flush(shard: int, rows: list[ArticleRow]) -> None:
            table = rows_to_table(rows)
            previews.setdefault(shard, table.slice(0, 5))
            background.submit(streams[shard].write, table)

        splitter = ShardSplitter(n_shards, [int(k) for k in keys], flush, max_article_bytes)
        for rec in records:
            splitter.add(rec)
            if progress is not None and splitter.records_seen % 1000 == 0:
                progress.maybe_log(splitter.records_seen, splitter.source_bytes_seen)
        stats = splitter.finish()
        background.drain()
    if progress is not None:
        progress.maybe_log(splitter.records_seen, splitter.source_bytes_seen, force=True)
    return IngestResult(stats, splitter.records_seen, splitter.source_bytes_seen, previews)
