"""UI metadata of the harmonics family: the sh_basis run summary."""

from __future__ import annotations

import dagster as dg

from sphere_assets.core.metadata import row_metadata
from sphere_assets.harmonics.contract import SH_BASIS

WORST_CASE_KEYS = (
    "max_gram_error",
    "max_addition_error",
    "n_zero_columns",
    "n_nonfinite",
    "round_trip_rel_error",
)


def per_l_markdown(stats: list[dict]) -> dg.MetadataValue:
    """One table row per band limit built in the run."""
    return dg.MetadataValue.md(
        "| L | grid | build s | gram err | round trip err | MB |\n|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {st['L']} | {st['grid']} | {st['build_seconds']} | "
            f"{st['max_gram_error']:.1e} | {st['round_trip_rel_error']:.1e} | "
            f"{st['tensor_bytes'] / 1e6:.2f} |"
            for st in stats
        )
    )


def run_summary(stats: list[dict]) -> dict:
    """One partition: its values; several in one run: the worst case + a table per L."""
    if len(stats) == 1:
        return dict(stats[0])
    return {
        "L": ",".join(str(st["L"]) for st in stats),
        "grid": "; ".join(st["grid"] for st in stats),
        "build_seconds": round(sum(st["build_seconds"] for st in stats), 4),
        **{k: max(st[k] for st in stats) for k in WORST_CASE_KEYS},
        "per_L": per_l_markdown(stats),
    }


def materialization_metadata(stats: list[dict], jax_metadata: dict, path) -> dict:
    """Everything the sh_basis materialization shows in the UI."""
    return {
        **row_metadata(SH_BASIS, len(stats)),
        **run_summary(stats),
        **jax_metadata,
        "path": dg.MetadataValue.path(str(path)),
    }
