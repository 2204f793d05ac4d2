"""incoming_files: new or changed files in an incoming directory re-ingest the shards they touch.

Configuration (environment, read at each evaluation):

* ``SPHERE_INCOMING_DIR`` — the directory to watch. Unset → the sensor skips with a reason. When
  it is set at load time the sensor is RUNNING by default, otherwise STOPPED.
* the glob: ``SPHERE_CORPUS_GLOB`` when ``SPHERE_CORPUS=files`` and a glob is set (it should
  cover the incoming directory), else ``$SPHERE_INCOMING_DIR/**/*``. Article ids of txt/md files
  are paths relative to the glob root, exactly as ``raw_articles`` computes them.

Each tick :func:`sphere_assets.refresh.incoming.scan` compares the files with the cursor (JSON:
mtime + size + sha256 + shards per path, see that module) and, for every affected shard, yields
one ``RunRequest`` for ``raw_articles`` of that shard plus its shard-partitioned descendants
that can run (:func:`sphere_assets.refresh.freshness.plan_partition` with ``raw_articles`` forced), with
run config pointing the corpus resource at the watched glob. Global merges (entropy model,
vocabulary, catalog) follow through declarative automation.

Idempotent: ``run_key = incoming/g<generation>/shard=<k>/<digest of the files touching k>``; a
tick evaluated twice from the same cursor asks for the same runs and Dagster launches them once.
Writers should create files under a dot-name and rename them into place (globs skip dot-files),
so half-written files are never ingested; a file that still changes is simply seen again.
"""

import os

import dagster as dg
import mmh3

from sphere_assets.core.partitions import shard_partitions
from sphere_assets.ingest.raw_articles import raw_articles
from sphere_assets.refresh.freshness import (
    MaterializationIndex,
    descendants_within,
    plan_partition,
    shard_asset_keys,
)
from sphere_assets.refresh.incoming import dumps_state, loads_state, scan
from sphere_assets.refresh.jobs import SHARDS_JOB
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.corpus_sources import FieldNames

SENSOR_NAME = "incoming_files"
INCOMING_ENV = "SPHERE_INCOMING_DIR"


def incoming_glob(incoming_dir: str, corpus: CorpusSourceResource) -> str:
    if corpus.kind == "files" and corpus.path_glob:
        return corpus.path_glob
    return os.path.join(incoming_dir, "**", "*")


def incoming_requests(context, corpus: CorpusSourceResource, incoming_dir: str | None):
    """(run requests or a SkipReason, new cursor) for one evaluation."""
    if not incoming_dir:
        return dg.SkipReason(f"{INCOMING_ENV} is not set: nothing to watch"), context.cursor
    if not os.path.isdir(os.path.expanduser(incoming_dir)):
        return dg.SkipReason(f"{INCOMING_ENV}={incoming_dir} is not a directory"), context.cursor
    pattern = incoming_glob(os.path.expanduser(incoming_dir), corpus)
    n_shards = len(shard_partitions.get_partition_keys())
    fields = FieldNames(corpus.id_field, corpus.title_field, corpus.text_field, corpus.url_field)
    result = scan(pattern, loads_state(context.cursor, n_shards), n_shards, fields)
    if result.ignored:
        context.log.warning(f"ignored files with unsupported suffixes: {result.ignored[:20]}")
    new_cursor = dumps_state(result.state)
    if not result.has_changes:
        return dg.SkipReason(f"no new or changed files in {pattern}"), new_cursor

    graph = context.repository_def.asset_graph
    index = MaterializationIndex(context.instance)
    candidates = descendants_within(graph, [raw_articles.key], shard_asset_keys(graph))
    requests = []
    for shard, rels in result.affected.items():
        partition = str(shard)
        plan = plan_partition(
            index, graph, partition, forced=[raw_articles.key], candidates=candidates
        )
        states = [
            f"{rel}:{result.state.files[rel].sha256 if rel in result.state.files else 'deleted'}"
            for rel in rels
        ]
        digest = f"{mmh3.hash128('|'.join(states).encode(), seed=0, signed=False):032x}"[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"incoming/g{result.state.generation}/shard={partition}/{digest}",
                partition_key=partition,
                asset_selection=plan.keys,
                run_config={
                    "resources": {"corpus": {"config": {"kind": "files", "path_glob": pattern}}}
                },
                tags={
                    "sphere/trigger": "incoming",
                    "sphere/files": ",".join(rels)[:1000],
                },
            )
        )
    context.log.info(
        f"{pattern}: new {result.new[:20]}, changed {result.changed[:20]}, "
        f"deleted {result.deleted[:20]} -> shards {sorted(result.affected)}"
    )
    return requests, new_cursor


def build_incoming_sensor(minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    running = bool(os.environ.get(INCOMING_ENV))

    @dg.sensor(
        name=SENSOR_NAME,
        job_name=SHARDS_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
        ),
        description=(
            f"Watches ${INCOMING_ENV} (files corpus): new/changed/deleted files re-ingest "
            "raw_articles and its shard descendants for the shards they touch."
        ),
    )
    def incoming_files(context: dg.SensorEvaluationContext, corpus: CorpusSourceResource):
        outcome, cursor = incoming_requests(context, corpus, os.environ.get(INCOMING_ENV))
        if isinstance(outcome, dg.SkipReason):
            return dg.SensorResult(skip_reason=outcome, cursor=cursor)
        return dg.SensorResult(run_requests=outcome, cursor=cursor)

    return incoming_files


incoming_files_sensor = build_incoming_sensor()
