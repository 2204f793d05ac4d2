"""Reconstructable jobs for tests/refresh/test_jobs.py (step processes import this module).

``kill_job``: raw_articles with the multiprocess executor and a corpus that SIGKILLs its own
step process part-way through the source, after Parquet batches were already written to
staging — once: the kill leaves a marker file, so the retry runs through. ``kill_job`` carries
the pipeline's op retry policy (a crashed step process is retried inside the run);
``kill_job_without_op_retry`` fails, and is re-executed from failure as the run-retry daemon
does. Settings come from environment variables because the
step runs in a fresh process.
"""

import os
import signal

import dagster as dg

from sphere_assets.ingest import raw_articles as ingest
from sphere_assets.refresh.jobs import OP_RETRY_POLICY, RUN_RETRY_TAGS
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.warehouse import WarehouseResource

KILL_WAREHOUSE_ENV = "SPHERE_TEST_KILL_WAREHOUSE"
KILL_GLOB_ENV = "SPHERE_TEST_KILL_GLOB"
KILL_MARKER_ENV = "SPHERE_TEST_KILL_MARKER"
KILL_AFTER_ENV = "SPHERE_TEST_KILL_AFTER"


class SelfKillingCorpus(CorpusSourceResource):
    """A files corpus whose reader SIGKILLs the process after ``kill_after`` records, once."""

    kill_after: int = 0
    marker: str = ""

    def records(self):
        for i, rec in enumerate(super().records()):
            if i == self.kill_after and self.marker and not os.path.exists(self.marker):
                with open(self.marker, "w") as fh:
                    fh.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            yield rec


def _kill_job(op_retry: bool) -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=[ingest.raw_articles],
        jobs=[
            dg.define_asset_job(
                "kill_job",
                selection=[ingest.raw_articles],
                tags=RUN_RETRY_TAGS,
                op_retry_policy=OP_RETRY_POLICY if op_retry else None,
            )
        ],
        resources={
            "warehouse": WarehouseResource(root=os.environ[KILL_WAREHOUSE_ENV]),
            "corpus": SelfKillingCorpus(
                kind="files",
                path_glob=os.environ[KILL_GLOB_ENV],
                kill_after=int(os.environ.get(KILL_AFTER_ENV, "0")),
                marker=os.environ.get(KILL_MARKER_ENV, ""),
            ),
        },
        executor=dg.multiprocess_executor,
    )
    return defs.resolve_job_def("kill_job")


def kill_job() -> dg.JobDefinition:
    return _kill_job(op_retry=True)


def kill_job_without_op_retry() -> dg.JobDefinition:
    return _kill_job(op_retry=False)
