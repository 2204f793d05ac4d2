"""Helpers that turn results into Dagster metadata (column schema, previews, pictures)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import dagster as dg
import pyarrow as pa

from sphere_resources.contracts import AssetContract


def column_schema(contract: AssetContract) -> dg.TableSchema | None:
    """The asset's column schema for the UI, from its data contract (the one place it is built):
    Parquet columns with their docs, then every safetensors array as ``<stem>.<name>``."""
    docs = contract.column_docs
    columns = (
        [
            dg.TableColumn(f.name, str(f.type), description=docs.get(f.name) or None)
            for f in contract.schema
        ]
        if contract.schema is not None
        else []
    )
    for stem, specs in sorted(contract.tensors.items()):
        for name, spec in specs.items():
            shape = ", ".join(str(s) for s in spec.shape)
            columns.append(
                dg.TableColumn(
                    f"{stem}.{name}",
                    f"{spec.dtype}[{shape}]",
                    description=f"safetensors array in {stem}.safetensors",
                )
            )
    return dg.TableSchema(columns=columns) if columns else None


def row_metadata(contract: AssetContract, row_count: int) -> dict:
    """``dagster/row_count`` and ``dagster/column_schema`` of one materialization."""
    return {"dagster/row_count": row_count, "dagster/column_schema": column_schema(contract)}


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


def partition_results(
    context: dg.AssetExecutionContext,
    metadata_by_partition: Mapping[str, dict],
    check_results: Sequence[dg.AssetCheckResult] = (),
) -> dg.MaterializeResult:
    """The result of a shard asset's run: every partition's materialization carries its OWN
    metadata (row count, path, statistics, accounting), whether the run held one partition or a
    range (``BackfillPolicy.single_run``), through ``context.add_asset_metadata(...,
    partition_key=...)``. Only the list of the run's partitions is shared by all of them."""
    for key, metadata in metadata_by_partition.items():
        context.add_asset_metadata(metadata, partition_key=key)
    return dg.MaterializeResult(
        metadata={"partitions_in_run": ",".join(metadata_by_partition)},
        check_results=list(check_results),
    )
