"""`sphere` command line: materialize everything, query the catalog, restore spans.

sphere materialize-all            every asset, every partition, in dependency order
sphere sql "select ..."           run SQL against the DuckDB catalog (data/sphere.duckdb)
sphere plan                       print the stages materialize-all would run
sphere dead-runs                  mark runs whose process is gone failed, free their pool slots
sphere hll compare A B            |A∖B|, |B∖A|, |A∩B|, Jaccard, τ, ρ of two HLLSets (± s.e.)
sphere restore --article ID       restore patch orderings from an HLLSet (--text, --file)
sphere query --text "..."         stored patches / articles most similar to a text (--article ID --patch N)
sphere cone --theta T --phi P --aperture A   every point within A degrees of a direction (--shells a:b)

Paths come from $SPHERE_WAREHOUSE, $SPHERE_CATALOG and $DAGSTER_HOME when set, else from the
project (the directory holding pyproject.toml and data/), never from the current directory;
materialize-all and sql say which was used.
"""

import argparse
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DAGSTER_HOME = "data/dagster_home"
# variable -> default path under the project root (sphere_resources/contracts.py defaults)
PROJECT_PATHS = {
    "SPHERE_WAREHOUSE": "data/warehouse",
    "SPHERE_CATALOG": "data/sphere.duckdb",
    "DAGSTER_HOME": DEFAULT_DAGSTER_HOME,
}


def find_project_root(start: Path | None = None) -> Path:
    """The project: the checkout this package runs from when it holds pyproject.toml (an
    editable install, `make run`), else the nearest directory above ``start`` (the current
    directory) holding pyproject.toml and data/, else ``start`` itself."""
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "data").is_dir():
            return d
    return here


@dataclass
class Project:
    """Where the CLI reads and writes, and where each path came from."""

    root: Path
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, start: Path | None = None) -> "Project":
        """Absolute paths for PROJECT_PATHS, exported so step processes (which share the
        current directory but not its meaning) and the code location see the same ones: a set
        variable wins (made absolute), else the project default."""
        root = find_project_root(start)
        project = cls(root)
        for name, default in PROJECT_PATHS.items():
            value = os.environ.get(name)
            if value:
                project.sources[name] = f"${name}"
                path = Path(value).expanduser().resolve()
            else:
                project.sources[name] = f"project default under {root}"
                path = root / default
            os.environ[name] = str(path)
        return project

    def describe(self, *names: str) -> list[str]:
        return [
            f"{n.lower().replace('sphere_', '')}: {os.environ[n]} ({self.sources[n]})"
            for n in names
        ]


PROJECT = Project(REPO_ROOT)


def quiet_warnings() -> None:
    """Dagster's BetaWarning/PreviewWarning (API maturity notes about our own decorators) are
    not the user's business; matched by message so this needs no dagster import."""
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or data/dagster_home with the repo's dagster.yaml copied in."""
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT.root / DEFAULT_DAGSTER_HOME).resolve()
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


def progress_stream(choice: str, verbose: bool):
    """Where the one-line progress display draws (sphere_assets/refresh/progress.py): stdout
    when it is a terminal (``auto``) or always (``on``); None on a pipe or file, with
    ``--verbose`` (Dagster's events would interleave with it) or ``--progress off``."""
    if verbose or choice == "off":
        return None
    if choice == "on" or sys.stdout.isatty():
        return sys.stdout
    return None


def materialize_all(
    partition_filter: set[str] | None = None, verbose: bool = False, progress: str = "auto"
) -> int:
    """Every stage as one real instance run of its job (sphere_assets/refresh/materialize.py),
    one line per stage/partition, a summary table at the end; on a terminal, one line redrawn in
    place shows the running stage's current step, count, rate and ETA."""
    ensure_dagster_home()
    import dagster as dg

    from sphere_assets.definitions import defs
    from sphere_assets.refresh import materialize as mz

    stages = plan_stages(defs)
    try:
        runs, notes = mz.plan_runs(stages, partition_filter)
    except mz.UnknownPartitionsError as exc:
        print(f"sphere materialize-all: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, flush=True)
    instance = dg.DagsterInstance.get()
    report_dead_runs(instance)  # a killed earlier run would hold the heavy pool forever
    started = time.perf_counter()
    outcomes = []
    for run in runs:
        if verbose:
            print(f"--> {run.label()}", flush=True)
        outcome = mz.execute_stage_run(
            instance,
            run,
            str(PROJECT.root),
            run_tags(),
            verbose=verbose,
            progress=progress_stream(progress, verbose),
            progress_label=f"[{run.stage}/{len(stages)}] {run.job_name}{run.span()}",
        )
        outcomes.append(outcome)
        for line in mz.outcome_lines(outcome, len(stages)):
            print(line, flush=True)
        if not outcome.success:
            for err in outcome.errors:
                print(f"    {err}", file=sys.stderr)
            print(
                f"FAILED: {run.label()} (run {outcome.run_id}); its events: "
                "`sphere materialize-all --verbose` or the run's page in `dagster dev`",
                file=sys.stderr,
            )
            return 1
    removed = clean_warehouse_staging()
    if removed:
        print(f"staging: removed {removed} leftover(s) of earlier writes", flush=True)
    print()
    for line in mz.summary_table(outcomes, time.perf_counter() - started):
        print(line)
    return 0


def clean_warehouse_staging() -> int:
    """Remove the staging leftovers no writer will come back for (``Warehouse.clean_staging``).

    A replaced partition version outlives its swap by a short grace (sphere_resources/swap.py)
    and the writing process deletes it at exit; a step process that ends without running its
    exit hooks, or is killed, leaves it behind, and only the next write of that partition
    would remove it. A run of every stage is the natural point to sweep them."""
    from sphere_resources.store import Warehouse

    root = Path(os.environ["SPHERE_WAREHOUSE"])
    return Warehouse(root).clean_staging() if root.is_dir() else 0


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
    """Run ``query`` on the catalog; a DuckDB error is one line on stderr and exit status 1."""
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
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"sphere sql: {first}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


def print_plan(defs) -> None:
    for i, (pdef, keys) in enumerate(plan_stages(defs), start=1):
        parts = pdef.get_partition_keys() if pdef is not None else ["(unpartitioned)"]
        print(f"stage {i}: {[k.to_user_string() for k in keys]} partitions {parts}")


def main(argv: list[str] | None = None) -> int:
    global PROJECT
    quiet_warnings()
    PROJECT = Project.resolve()
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
    p_all.add_argument(
        "--verbose", action="store_true", help="print Dagster's events (DEBUG) of every run"
    )
    p_all.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="one progress line redrawn in place while a stage runs (auto: on a terminal only)",
    )
    sub.add_parser("plan", help="print the materialization stages")
    sub.add_parser(
        "dead-runs", help="mark runs whose process is gone failed and free their pool slots"
    )
    p_sql = sub.add_parser("sql", help="query the DuckDB catalog")
    p_sql.add_argument("query")
    p_sql.add_argument("--catalog", default=os.environ["SPHERE_CATALOG"])
    try:
        from sphere_assets.ngrams.restore_cli import add_restore_parser
    except ImportError:
        add_restore_parser = None
    if add_restore_parser is not None:
        add_restore_parser(sub)
    from sphere_assets.ngrams.hll_compare_cli import add_hll_parser

    add_hll_parser(sub)
    from sphere_assets.navigate.cli import add_navigate_parsers

    add_navigate_parsers(sub)  # query, cone
    args = parser.parse_args(argv)
    if args.cmd == "materialize-all":
        for line in PROJECT.describe("SPHERE_WAREHOUSE", "SPHERE_CATALOG", "DAGSTER_HOME"):
            print(line, flush=True)
        wanted = {p for p in args.partitions.split(",") if p} or None
        return materialize_all(wanted, verbose=args.verbose, progress=args.progress)
    if args.cmd == "plan":
        from sphere_assets.definitions import defs

        print_plan(defs)
        return 0
    if args.cmd == "dead-runs":
        ensure_dagster_home()
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            if not report_dead_runs(instance):
                print("no dead runs")
        return 0
    if args.cmd == "sql":
        source = "--catalog" if args.catalog != os.environ["SPHERE_CATALOG"] else None
        where = source or PROJECT.sources["SPHERE_CATALOG"]
        print(f"catalog: {Path(args.catalog).resolve()} ({where})", file=sys.stderr)
        return run_sql(args.query, args.catalog)
    if args.cmd == "restore" and not Path(args.warehouse).expanduser().is_dir():
        print(
            f"sphere restore: the warehouse {args.warehouse} does not exist (--warehouse, "
            "$SPHERE_WAREHOUSE or the project's data/warehouse); run `sphere materialize-all`",
            file=sys.stderr,
        )
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
