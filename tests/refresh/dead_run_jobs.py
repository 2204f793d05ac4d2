"""Jobs for tests/refresh/test_dead_runs.py: one heavy step that holds the pool until killed,
one that finishes at once. Both in the ``heavy`` pool, as the pipeline's torch/JAX steps."""

import os
import time
from pathlib import Path

import dagster as dg

from sphere_assets.core.pools import HEAVY_POOL

READY_ENV = "SPHERE_TEST_HOLD_READY"


@dg.op(pool=HEAVY_POOL)
def hold_heavy_slot() -> None:
    Path(os.environ[READY_ENV]).write_text(str(os.getpid()))
    time.sleep(600)  # killed long before


@dg.op(pool=HEAVY_POOL)
def quick_heavy_step() -> int:
    return 1


@dg.job
def hold_job():
    hold_heavy_slot()


@dg.job
def quick_job():
    quick_heavy_step()


def run(job_name: str) -> None:
    """Run a job in this process as `sphere materialize-all` runs its stages."""
    from sphere_assets.refresh.dead_runs import run_tags

    job = {"hold": hold_job, "quick": quick_job}[job_name]
    result = job.execute_in_process(instance=dg.DagsterInstance.get(), tags=run_tags())
    print("run", result.run_id, "success", result.success, flush=True)


if __name__ == "__main__":
    import sys

    run(sys.argv[1])
