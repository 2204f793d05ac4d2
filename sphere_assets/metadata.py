"""Helpers that turn results into Dagster metadata (column schema, previews, pictures)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import dagster as dg
import pyarrow as pa

from sphere_assets.contracts import column_schema_metadata


def table_schema(schema: pa.Schema, docs: Mapping[str, str] | None = None) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, type_, description=desc or None)
            for name, type_, desc in column_schema_metadata(schema, docs)
        ]
    )


def standard_metadata(
    schema: pa.Schema, row_count: int, docs: Mapping[str, str] | None = None
) -> dict:
    return {"dagster/row_count": row_count, "dagster/column_schema": table_schema(schema, docs)}


def preview_markdown(
    table: pa.Table, columns: list[str], rows: int = 5, width: int = 60
) -> dg.MetadataValue:
    """A small markdown table of the first rows (long cells shortened for display only)."""
    head = table.select(columns).slice(0, rows).to_pylist()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in head:
        cells = []
        for c in columns:
            v = row[c]
            s = v.hex() if isinstance(v, bytes) else str(v)
            s = s.replace("\n", " ").replace("|", "\\|")
            cells.append(s if len(s) <= width else s[: width - 1] + "…")
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def figure_markdown(fig, alt: str) -> dg.MetadataValue:
    """Embed a matplotlib figure as a PNG data URI so it shows in the Dagster UI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def new_figure(width: float = 6.0, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))
