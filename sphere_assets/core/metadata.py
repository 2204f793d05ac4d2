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


# A picture is stored in the event log with every materialization of every partition: keep
# each one small (the Mollweide figure at 90 dpi, RGBA, 20k points was 314 KB). 30,000 PNG
# bytes are at most 40,000 characters of base64 in the metadata entry.
PICTURE_MAX_BYTES = 30_000
PICTURE_DPIS = (80, 64, 48, 36)
PICTURE_COLORS = 64


def _palette_png(fig, dpi: int) -> bytes:
    """The figure as an optimized PNG with a palette of at most PICTURE_COLORS colours (plots
    use few colours; a palette PNG is 3-4x smaller than RGBA). Deterministic: no timestamp or
    software tag, median-cut quantization without dithering."""
    from PIL import Image

    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    raw.seek(0)
    with Image.open(raw) as image:
        paletted = image.convert("RGB").quantize(
            colors=PICTURE_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    out = io.BytesIO()
    paletted.save(out, format="PNG", optimize=True)
    return out.getvalue()


def figure_png(fig, max_bytes: int = PICTURE_MAX_BYTES) -> bytes:
    """The figure as a palette PNG of at most ``max_bytes``, at the highest dpi of PICTURE_DPIS
    that fits; closes the figure. A figure that does not fit even at the lowest dpi is an error
    (draw fewer points), never a silently huge event."""
    import matplotlib.pyplot as plt

    try:
        for dpi in PICTURE_DPIS:
            data = _palette_png(fig, dpi)
            if len(data) <= max_bytes:
                return data
    finally:
        plt.close(fig)
    raise ValueError(
        f"picture of {len(data)} bytes at {PICTURE_DPIS[-1]} dpi exceeds {max_bytes} bytes"
    )


def picture_key(what: str) -> str:
    """The metadata name of a picture: says what it shows, and sorts the pictures together."""
    return f"picture: {what}"


def figure_markdown(fig, alt: str, max_bytes: int = PICTURE_MAX_BYTES) -> dg.MetadataValue:
    """Embed a matplotlib figure as a small PNG data URI so it shows in the Dagster UI."""
    data = base64.b64encode(figure_png(fig, max_bytes)).decode("ascii")
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
    partition_key=...)``. Only the list of the run's partitions is shared by all of them; it is
    added after each partition's own entries (run-wide metadata would be shown before them, and
    the pictures lead)."""
    in_run = ",".join(metadata_by_partition)
    for key, metadata in metadata_by_partition.items():
        context.add_asset_metadata({**metadata, "partitions_in_run": in_run}, partition_key=key)
    return dg.MaterializeResult(check_results=list(check_results))
