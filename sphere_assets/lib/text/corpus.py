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
* a record without an id -> ``missing_id``; without a text field -> ``missing_text``; a text that
  is not a string (a number, list, dict, bool) -> ``invalid_text``; a jsonl line that is not a
  JSON object -> ``invalid_json``; a repeated id in the same source -> ``duplicate_id`` (the first
  occurrence wins);
* every other field is validated too: an id that is not a string or an integer, a title or url
  that is not a string, or any of id/title/url/source holding a lone surrogate (not encodable as
  UTF-8) -> ``invalid_field``;
* U+0000 (NUL) in any stored field -> ``contains_nul``: PostgreSQL ``text`` cannot hold it, so an
  accepted article could never be published; rejecting it here keeps the warehouse, DuckDB and
  the Postgres catalog equal.

Every reject remembers where the first one of its reason came from (:class:`RejectSample`), so
a user can find it in the source.
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
    "invalid_text",
    "invalid_field",
    "contains_nul",
    "invalid_json",
    "invalid_utf8",
    "empty",
    "oversize",
    "duplicate_id",
)


class SourceRecord(Protocol):
    """What a corpus source yields (``sphere_resources.corpus_sources.SourceRecord``)."""

    locator: str  # where the record sits in its source (stable): used to shard id-less rejects
    article_id: object  # str when well-formed; anything else is rejected (invalid_field)
    title: object
    text: object
    source: str
    url: object
    problem: str | None  # a reject reason the reader already knows (e.g. invalid_json)
    line: int | None  # 1-based line of a jsonl record (None for other sources)


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


@dataclass(frozen=True)
class Reject:
    """Why a record was not stored: ``reason`` (one of REJECT_REASONS) and, when one field is
    to blame, that ``field`` (article_id, title, text, url, source)."""

    reason: str
    field: str | None = None


def field_problem(value: object, allow_int: bool = False) -> str | None:
    """The reject reason of one scalar field (id, title, url, source), or None when it stores.

    Stores: None, a str encodable as UTF-8 without NUL, and (``allow_int``) an int that is not
    a bool. Anything else -> ``invalid_field``; a NUL -> ``contains_nul``.
    """
    if type(value) is str:  # the common case first: one type test, no isinstance chain
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\udc80" JSON escape
                return "invalid_field"
        return "contains_nul" if "\x00" in value else None
    if value is None:
        return None
    if isinstance(value, bool):
        return "invalid_field"
    if isinstance(value, int):
        return None if allow_int else "invalid_field"
    if isinstance(value, str):  # a str subclass
        return field_problem(str(value), allow_int)
    return "invalid_field"


def _fields_problem(rec: SourceRecord) -> Reject | None:
    """The first unstorable field among id, title, url and source (None when all store)."""
    reason = field_problem(rec.article_id, True)
    if reason is not None:
        return Reject(reason, "article_id")
    reason = field_problem(rec.title)
    if reason is not None:
        return Reject(reason, "title")
    reason = field_problem(rec.url)
    if reason is not None:
        return Reject(reason, "url")
    reason = field_problem(rec.source)
    if reason is not None:
        return Reject(reason, "source")
    return None


def _decode_text(text: str | bytes | bytearray | memoryview) -> tuple[str, int | None] | Reject:
    """(text as str, its UTF-8 length when already known) or the reject: strict UTF-8, BOM dropped."""
    if isinstance(text, str):
        return text, (len(text) if text.isascii() else None)
    data = bytes(text)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.isascii():
        # ASCII is valid UTF-8 and already NFC: one cheap decode, length is the byte length.
        return data.decode("ascii"), len(data)
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return Reject("invalid_utf8", "text")


def normalize_record(rec: SourceRecord, max_article_bytes: int) -> ArticleRow | Reject:
    """An ArticleRow, or the Reject (reason one of REJECT_REASONS, and the field to blame)."""
    if rec.problem:
        return Reject(rec.problem)
    if rec.article_id is None or rec.article_id == "":
        return Reject("missing_id", "article_id")
    bad_field = _fields_problem(rec)
    if bad_field is not None:
        return bad_field
    text = rec.text
    if type(text) is str:  # inline fast path: most records are str already
        encoded_len = len(text) if text.isascii() else None
    elif text is None:
        return Reject("missing_text", "text")
    elif isinstance(text, str | bytes | bytearray | memoryview):
        decoded = _decode_text(text)
        if isinstance(decoded, Reject):
            return decoded
        text, encoded_len = decoded
    else:
        return Reject("invalid_text", "text")
    if encoded_len is None:
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        try:
            encoded_len = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return Reject("invalid_utf8", "text")
    if not text or text.isspace():  # isspace() inspects in place; strip() would copy the text
        return Reject("empty", "text")
    if "\x00" in text:
        return Reject("contains_nul", "text")
    if encoded_len > max_article_bytes:
        return Reject("oversize", "text")
    title = "" if rec.title is None else rec.title
    return ArticleRow(str(rec.article_id), title, text, rec.source, encoded_len, rec.url)


@dataclass(frozen=True)
class RejectSample:
    """Where the first reject of a reason came from: source (file), line (jsonl), locator
    (file:line, file:row, hf:…:index), the id as printable text, and the field to blame."""

    reason: str
    source: str
    locator: str
    line: int | None
    article_id: str | None
    field: str | None

    def describe(self) -> str:
        """One line for logs: ``<reason>: <source>[ line N] id=<id>[ field=<field>]``."""
        where = self.source + (f" line {self.line}" if self.line is not None else "")
        if self.line is None and self.locator != self.source:
            where += f" ({self.locator})"
        shown = "None" if self.article_id is None else f"'{self.article_id}'"
        out = f"{self.reason}: {where} id={shown}"
        return out + (f" field={self.field}" if self.field else "")


SAMPLE_ID_CHARS = 200  # a sample shows at most this much of an id (display only; data untouched)


def printable(value: object) -> str | None:
    """``value`` as text that can always be stored and printed: lone surrogates and control
    characters escaped, longer than SAMPLE_ID_CHARS cut with a marker saying how long it was."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
    if len(text) > SAMPLE_ID_CHARS:
        text = text[:SAMPLE_ID_CHARS] + f"… ({len(text)} chars)"
    return text


def reject_sample(rec: SourceRecord, reject: Reject) -> RejectSample:
    return RejectSample(
        reject.reason,
        printable(rec.source) or "",
        printable(rec.locator) or "",
        getattr(rec, "line", None),
        printable(rec.article_id),
        reject.field,
    )


# ---------------------------------------------------------------------------------------------
# Splitting a record stream into shards
# ---------------------------------------------------------------------------------------------


@dataclass
class ShardStats:
    articles_in: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    rejects: Counter = field(default_factory=Counter)
    samples: dict[str, RejectSample] = field(default_factory=dict)  # first reject per reason

    def reject(self, rec: SourceRecord, reject: Reject) -> None:
        """Count ``reject`` and keep it as the sample of its reason when it is the first."""
        self.rejects[reject.reason] += 1
        if reject.reason not in self.samples:
            self.samples[reject.reason] = reject_sample(rec, reject)

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
        if isinstance(result, Reject):
            stats.reject(rec, result)
            return
        if result.article_id in self._seen[shard]:
            stats.reject(rec, Reject("duplicate_id", "article_id"))
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
