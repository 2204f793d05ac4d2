"""`sphere` command line: materialize everything, query the catalog, restore spans.

sphere materialize-all            every asset, every partition, in dependency order
sphere sql "select ..."           run SQL against the DuckDB catalog (data/sphere.duckdb)
sphere plan                       print the stages materialize-all would run
sphere dead-runs                  mark runs whose process is gone failed, free their pool slots
sphere hll compare A B            |A∖B|, |B∖A|, |A∩B|, Jaccard, τ, ρ of two HLLSets (± s.e.)
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DAGSTER_HOME = "data/dagster_home"


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or data/dagster_home with the repo's dagster.yaml copied in."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    cfg = home / "dagster.yaml"
    if not cfg.exists() and (REPO_ROOT / "dagster.yaml").exists():
        shutil.copyfile(REPO_ROOT / "dagster.yaml", cfg)
    return home


def plan_stages(defs) -> list[tuple[object, list]]:
    """Group assets into stages: each stage shares one partitions definition and depends only on
    earlier stages or itself. Kahn's topological order, preferring to stay in the current
    partitions definition so stages are few."""
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable]
    deps = {k: {p for p in graph.get(k).parent_keys if p in keys} for k in keys}
    pdef = {k: graph.get(k).partitions_def for k in keys}
    done: set = set()
    stages: list[tuple[object, list]] = []
    while len(done) < len(keys):
        ready = sorted(
            (k for k in keys if k not in done and deps[k] <= done), key=lambda k: k.to_user_string()
        )
        if not ready:
            raise RuntimeError("asset graph has a cycle")
        current = stages[-1][0] if stages else None
        same = [k for k in ready if pdef[k] == current] if stages else []
        if same:
            stages[-1][1].extend(same)
            done.update(same)
            continue
        first = ready[0]
        group = [k for k in ready if pdef[k] == pdef[first]]
        stages.append((pdef[first], group))
        done.update(group)
    return stages


def materialize_all(partition_filter: set[str] | None = None) -> int:
    ensure_dagster_home()
    import dagster as dg

    from sphere_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    report_dead_runs(instance)  # a killed earlier run would hold the heavy pool forever
    job = defs.resolve_implicit_global_asset_job_def()
    stages = plan_stages(defs)
    started = time.perf_counter()
    for i, (pdef, keys) in enumerate(stages, start=1):
        names = ", ".join(k.to_user_string() for k in keys)
        partition_keys = pdef.get_partition_keys() if pdef is not None else [None]
        if partition_filter and pdef is not None:
            partition_keys = [p for p in partition_keys if p in partition_filter] or partition_keys
        for pk in partition_keys:
            label = f"stage {i}/{len(stages)} [{names}]" + (
                f" partition {pk}" if pk is not None else ""
            )
            print(f"--> {label}", flush=True)
            t0 = time.perf_counter()
            result = job.get_subset(asset_selection=set(keys)).execute_in_process(
                instance=instance, partition_key=pk, raise_on_error=False, tags=run_tags()
            )
            if not result.success:
                print(
                    f"FAILED: {label} (run {result.run_id}); see `dagster dev` for its logs",
                    file=sys.stderr,
                )
                return 1
            print(f"    ok in {time.perf_counter() - t0:.1f}s (run {result.run_id})", flush=True)
    print(
        f"materialized {sum(len(k) for _, k in stages)} assets in {time.perf_counter() - started:.1f}s"
    )
    return 0


def run_tags() -> dict[str, str]:
    from sphere_assets.refresh.dead_runs import run_tags

    return run_tags()


def report_dead_runs(instance) -> int:
    """Reap runs whose process is gone (sphere_assets/refresh/dead_runs.py) and say so."""
    from sphere_assets.refresh.dead_runs import reap_dead_runs

    dead = reap_dead_runs(instance)
    for d in dead:
        print(f"dead run: {d.message()}", flush=True)
    return len(dead)


def run_sql(query: str, catalog: str) -> int:
    import duckdb

    if not Path(catalog).exists():
        print(
            f"no catalog at {catalog}: run `sphere materialize-all` (or materialize duckdb_catalog) first",
            file=sys.stderr,
        )
        return 2
    con = duckdb.connect(catalog, read_only=True)
    try:
        rel = con.sql(query)
        if rel is not None:
            rel.show(max_rows=200, max_width=200)
    finally:
        con.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sphere", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_all = sub.add_parser("materialize-all", help="materialize every asset and partition")
    p_all.add_argument(
        "--partitions",
        default="",
        help="comma-separated partition keys to limit partitioned stages to",
    )
    sub.add_parser("plan", help="print the materialization stages")
    sub.add_parser(
        "dead-runs", help="mark runs whose process is gone failed and free their pool slots"
    )
    p_sql = sub.add_parser("sql", help="query the DuckDB catalog")
    p_sql.add_argument("query")
    p_sql.add_argument("--catalog", default=os.environ.get("SPHERE_CATALOG", "data/sphere.duckdb"))
    try:
        from sphere_assets.ngrams.restore_cli import add_restore_parser
    except ImportError:
        add_restore_parser = None
    if add_restore_parser is not None:
        add_restore_parser(sub)
    from sphere_assets.ngrams.hll_compare_cli import add_hll_parser

    add_hll_parser(sub)
    args = parser.parse_args(argv)
    if args.cmd == "materialize-all":
        wanted = {p for p in args.partitions.split(",") if p} or None
        return materialize_all(wanted)
    if args.cmd == "plan":
        from sphere_assets.definitions import defs

        for i, (pdef, keys) in enumerate(plan_stages(defs), start=1):
            parts = pdef.get_partition_keys() if pdef is not None else ["(unpartitioned)"]
            print(f"stage {i}: {[k.to_user_string() for k in keys]} partitions {parts}")
        return 0
    if args.cmd == "dead-runs":
        ensure_dagster_home()
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            if not report_dead_runs(instance):
                print("no dead runs")
        return 0
    if args.cmd == "sql":
        return run_sql(args.query, args.catalog)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
