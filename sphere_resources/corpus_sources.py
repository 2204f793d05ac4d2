"""Corpus sources: the readers behind :class:`~sphere_resources.corpus.CorpusSourceResource`.

Each source yields :class:`SourceRecord`s in a deterministic order (bundled CPython docs, files of
txt/md/rst/py or jsonl/parquet rows, a Hugging Face dataset). A record carries what the source
said; normalization and sharding are pure compute (``sphere_assets.lib.text.corpus``).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUNDLED_SOURCE = "bundled:pydoc_data.topics"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".py")


@dataclass(frozen=True)
class SourceRecord:
    locator: str  # where the record sits in its source (stable): used to shard id-less rejects
    # What the source said, unchecked: a non-string value (a list id, ``"url": 5``) is passed on
    # as it is, so that normalization counts it as a reject instead of the writer crashing on it.
    article_id: object
    title: object
    text: object
    source: str
    url: object = None
    problem: str | None = None  # a reject reason the reader already knows (e.g. invalid_json)
    line: int | None = None  # 1-based line of a jsonl record, for reject samples


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


def _mapping_record(
    obj: dict, fields: FieldNames, locator: str, source: str, line: int | None = None
) -> SourceRecord:
    raw_id = obj.get(fields.id_field)
    # integer ids (common in jsonl/parquet dumps) are their decimal text; any other non-string
    # id goes on unchanged and is rejected as invalid_field
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    return SourceRecord(
        locator=locator,
        article_id=raw_id,
        title=obj.get(fields.title_field),
        text=obj.get(fields.text_field),
        source=source,
        url=obj.get(fields.url_field),
        line=line,
    )


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


def jsonl_lines(fh) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the records of a binary jsonl stream.

    JSON Lines separates records by ``\n`` (a ``\r\n`` ending is whitespace to JSON). Only
    ``\n`` splits: a raw U+2028 or U+0085 inside a JSON string is data, not a line break. A
    bare ``\r`` (classic Mac line ends, or a file edited with mixed ends) is JSON whitespace, so
    a line holding one valid value around it stays one record; a line that only parses once cut
    at its bare ``\r``s is that many records, each counted. Line numbers count every line end
    (``\n``, ``\r\n`` and a bare ``\r``), as an editor shows them.
    """
    lineno = 0
    for raw in fh:
        body = raw.rstrip(b"\n")
        if body.endswith(b"\r"):
            body = body[:-1]
        if b"\r" not in body or _is_json(body):
            lineno += 1
            yield lineno, body
            lineno += body.count(b"\r")
            continue
        for piece in body.split(b"\r"):
            lineno += 1
            yield lineno, piece


def _parse_jsonl_record(data: bytes, first: bool) -> tuple[dict | None, str | None]:
    """(object, None) or (None, reject reason) for one jsonl record's bytes."""
    try:
        # strict UTF-8 (json.loads on bytes would let encoded surrogates through); a BOM is
        # allowed at the start of the file only
        text = data.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError and ints longer than Python's digit limit;
        # RecursionError a value nested too deep to parse
        return None, "invalid_json"
    if not isinstance(obj, dict):
        return None, "invalid_json"
    return obj, None


def _jsonl_records(path: str, rel: str, fields: FieldNames) -> Iterator[SourceRecord]:
    with open(path, "rb") as fh:
        for lineno, line in jsonl_lines(fh):
            if not line.strip():
                continue
            locator = f"{rel}:{lineno}"
            obj, problem = _parse_jsonl_record(line, first=lineno == 1)
            if problem is not None:
                yield SourceRecord(
                    locator, None, None, None, str(path), problem=problem, line=lineno
                )
                continue
            yield _mapping_record(obj, fields, locator, str(path), lineno)


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
