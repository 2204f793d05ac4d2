"""Benchmark: the size (and render time) of the pictures in the materialization metadata.

Every picture is stored in the event log with every materialization of every partition, as a
base64 PNG in markdown. Measured on the shards of a materialized warehouse (default: the bundled
corpus' ``data/warehouse``, read only): the current pictures (palette PNG, down-sampled
Mollweide, ``sphere_assets.core.metadata.figure_markdown``) against the reference measured in
the same run, the previous rendering (RGBA PNG at 90 dpi, 20,000 Mollweide points). Target:
every picture entry <= 40 KB.

    .venv/bin/python bench/pictures.py [--warehouse data/warehouse]
"""

import argparse
import base64
import io
import time
import types

import numpy as np

from sphere_assets.core.metadata import figure_markdown
from sphere_assets.patching.report import histogram_markdown
from sphere_assets.placements import io as placements_io
from sphere_assets.placements import report
from sphere_assets.placements.shell_placements import ShellPlacementsConfig
from sphere_resources.warehouse import WarehouseResource

OLD_PLOT_SAMPLE = 20_000
ENTRY_TARGET = 40_960


def old_markdown(fig) -> str:
    """The previous rendering (reference): RGBA PNG at 90 dpi, base64 in markdown."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return f"![x](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')})"


def timed(make) -> tuple[int, float]:
    t0 = time.perf_counter()
    entry = make()
    return len(entry.value if hasattr(entry, "value") else entry), time.perf_counter() - t0


def shard_inputs(store, key: str):
    shells = placements_io.read_shells(store, key)
    coords = placements_io.read_coordinates(store, key)
    cfg, targets = placements_io.stored_shell_targets(store, key)
    counts = np.bincount(shells, minlength=cfg.n_shells)
    placement = types.SimpleNamespace(shell=shells, theta=coords["theta"], phi=coords["phi"])
    lengths = store.read_table("blt_patches", key, ["byte_len"]).column("byte_len").to_numpy()
    return placement, counts, np.asarray(targets), lengths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warehouse", default="data/warehouse")
    args = parser.parse_args()
    store = WarehouseResource(root=args.warehouse).store()
    keys = store.partitions("shell_placements")
    if not keys:
        raise SystemExit(f"no shell_placements partitions under {args.warehouse}: run `make run`")
    sample = ShellPlacementsConfig().plot_sample
    print(f"warehouse {args.warehouse}, shards {keys}, Mollweide points {sample} (was 20000)")
    print(
        f"{'shard':>5} {'picture':<22} {'points':>7} {'old bytes':>10} {'new bytes':>10} "
        f"{'ratio':>6} {'old s':>6} {'new s':>6}"
    )
    worst = 0
    for key in keys:
        p, counts, targets, lengths = shard_inputs(store, key)
        cases = {
            "mollweide": (
                lambda p=p: old_markdown(report.mollweide_figure(p, OLD_PLOT_SAMPLE)),
                lambda p=p: figure_markdown(report.mollweide_figure(p, sample), "x"),
            ),
            "occupancy": (
                lambda c=counts, t=targets: old_markdown(report.occupancy_figure(c, t)),
                lambda c=counts, t=targets: figure_markdown(report.occupancy_figure(c, t), "x"),
            ),
            "length_histogram": (
                lambda v=lengths: histogram_old(v),
                lambda v=lengths: histogram_markdown(v, "x"),
            ),
        }
        for name, (old, new) in cases.items():
            old_bytes, old_s = timed(old)
            new_bytes, new_s = timed(new)
            worst = max(worst, new_bytes)
            print(
                f"{key:>5} {name:<22} {p.shell.size:>7} {old_bytes:>10} {new_bytes:>10} "
                f"{old_bytes / new_bytes:>6.1f} {old_s:>6.2f} {new_s:>6.2f}"
            )
    print(f"largest picture entry: {worst} bytes (target <= {ENTRY_TARGET}): ", end="")
    print("OK" if worst <= ENTRY_TARGET else "OVER")


def histogram_old(lengths: np.ndarray) -> str:
    from sphere_assets.core.metadata import new_figure

    fig, ax = new_figure(6.0, 2.8)
    if lengths.size:
        ax.hist(lengths, bins=np.arange(0.5, int(lengths.max()) + 1.5, 1.0), color="#4c72b0")
        ax.set_yscale("log")
    return old_markdown(fig)


if __name__ == "__main__":
    main()
