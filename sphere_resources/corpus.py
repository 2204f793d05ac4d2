"""Corpus source resource: which articles raw_articles reads (bundled | files | hf)."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from sphere_resources.corpus_sources import (
    FieldNames,
    SourceRecord,
    bundled_records,
    bundled_total_bytes,
    file_records,
    files_total_bytes,
    hf_records,
)

SOURCE_KINDS = ("bundled", "files", "hf")


class CorpusSourceResource(dg.ConfigurableResource):
    """Where articles come from.

    * ``bundled`` — CPython's documentation topics (``pydoc_data.topics``), no download;
    * ``files`` — ``path_glob`` of txt/md/rst/py (one article per file) or jsonl/parquet rows;
    * ``hf`` — ``datasets.load_dataset(hf_name, hf_config, split=hf_split, streaming=True)``.
    """

    # A plain str (validated below) rather than a Literal: Dagster's EnvVar is only resolved at
    # run time, and pydantic would reject an EnvVar placeholder for a Literal field at load.
    kind: str = Field(default="bundled", description="Source kind: bundled | files | hf.")
    path_glob: str = Field(default="", description="files: glob of input files (** recurses).")
    hf_name: str = Field(default="", description="hf: dataset name, e.g. wikimedia/wikipedia.")
    hf_config: str = Field(default="", description="hf: dataset config, e.g. 20231101.en.")
    hf_split: str = Field(default="train", description="hf: split.")
    hf_data_files: str = Field(
        default="", description="hf: data_files for generic builders (parquet/json)."
    )
    limit: int = Field(
        default=0, description="hf: stop after this many records (0 = all); reported in metadata."
    )
    id_field: str = Field(default="id", description="jsonl/parquet/hf: id column.")
    title_field: str = Field(default="title", description="jsonl/parquet/hf: title column.")
    text_field: str = Field(default="text", description="jsonl/parquet/hf: text column.")
    url_field: str = Field(default="url", description="jsonl/parquet/hf: url column.")
    max_article_bytes: int = Field(
        default=16 << 20, description="Longer articles are rejected as oversize."
    )

    def _check_kind(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(
                f"corpus source kind {self.kind!r} is not one of {SOURCE_KINDS} (env SPHERE_CORPUS)"
            )

    def _fields(self) -> FieldNames:
        return FieldNames(self.id_field, self.title_field, self.text_field, self.url_field)

    def describe(self) -> str:
        if self.kind == "bundled":
            return "bundled:pydoc_data.topics"
        if self.kind == "files":
            return f"files:{self.path_glob}"
        return (
            f"hf:{self.hf_name}"
            + (f"/{self.hf_config}" if self.hf_config else "")
            + f"/{self.hf_split}"
        )

    def records(self) -> Iterator[SourceRecord]:
        self._check_kind()
        if self.kind == "bundled":
            return bundled_records()
        if self.kind == "files":
            if not self.path_glob:
                raise ValueError("corpus source 'files' needs path_glob (env SPHERE_CORPUS_GLOB)")
            return file_records(self.path_glob, self._fields())
        if not self.hf_name:
            raise ValueError("corpus source 'hf' needs hf_name (env SPHERE_HF_NAME)")
        return hf_records(
            self.hf_name,
            self.hf_config or None,
            self.hf_split,
            self._fields(),
            data_files=self.hf_data_files or None,
            limit=self.limit or None,
        )

    def total_bytes_hint(self) -> int | None:
        """Source size for progress ETA when knowable without reading it all."""
        if self.kind == "bundled":
            return bundled_total_bytes()
        if self.kind == "files" and self.path_glob:
            return files_total_bytes(self.path_glob)
        return None
