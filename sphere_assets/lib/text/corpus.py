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

import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import mmh3

REJECT_REASONS = (
    "missing_id",
    "missing_text",
    "invalid_json",
    "invalid_utf8",
    "empty",
    "oversize",
    "duplicate_id",
)


class SourceRecord(Protocol):
    """What a corpus source yields (``sphere_resources.corpus_sources.SourceRecord``)."""

    locator: str  # where the record sits in its source (stable): used to shard id-less rejects
    article_id: str | None
    title: str | None
    text: str | bytes | None
    source: str
    url: str | None
    problem: str | None  # a reject reason the reader already knows (e.g. invalid_json)


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
