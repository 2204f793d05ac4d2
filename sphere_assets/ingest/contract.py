"""Data contract of the ingest family: raw_articles (Parquet rows per shard)."""

from __future__ import annotations

import pyarrow as pa

from sphere_resources.contracts import SHARD_DIM, AssetContract, register

RAW_ARTICLES_SCHEMA = pa.schema(
    [
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("n_bytes", pa.int64(), nullable=False),
        pa.field("url", pa.string(), nullable=True),
    ]
)

RAW_ARTICLES_COLUMN_DOCS = {
    "article_id": "Stable article id from the source (shard = mmh3 x64 low 64 bits of id mod N).",
    "title": "Article title (empty string when the source has none).",
    "text": "Article text, NFC-normalized valid UTF-8.",
    "source": "Where the article came from (bundled:pydoc_data.topics, file path, hf:name/config/split).",
    "n_bytes": "Length of text in UTF-8 bytes.",
    "url": "Source URL when the source provides one.",
}


RAW_ARTICLES = register(
    AssetContract(
        name="raw_articles",
        partition_dim=SHARD_DIM,
        schema=RAW_ARTICLES_SCHEMA,
        column_docs=RAW_ARTICLES_COLUMN_DOCS,
        dictionary_columns=("source",),
    )
)
