"""Launch runs of sphere jobs through the instance's executor, stage by stage (test helper).

    python -m tests.celery_driver plan.json

plan.json: ``{"run_config": {...}, "stages": [[job_name, [partition_key | null, ...]], ...]}``.
The runs of one stage go concurrently (one thread per partition), so Celery workers share them;
a stage starts when the previous one succeeded. Prints one JSON line per run and exits non-zero
if any run failed. It runs as its own process because the executor is chosen when
``sphere_assets.definitions`` is imported (``SPHERE_EXECUTOR=celery``).
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

REPO = Path(__file__).resolve().parent.parent


def run_one(instance, recon_repo, job_name: str, partition: str | None, run_config: dict) -> dict:
    tags = {"dagster/partition": partition} if partition is not None else {}
    with dg.execute_job(
        recon_repo.get_reconstructable_job(job_name),
        instance=instance,
        run_config=run_config,
        tags=tags,
    ) as result:
        return {
            "job": job_name,
            "partition": partition,
            "run_id": result.run_id,
            "success": result.success,
        }


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    recon_repo = ReconstructableRepository.for_module(
        "sphere_assets.definitions", "defs", working_directory=str(REPO)
    )
    ok = True
    with dg.DagsterInstance.get() as instance:
        for job_name, partitions in plan["stages"]:
            with ThreadPoolExecutor(max_workers=max(1, len(partitions))) as pool:
                futures = [
                    pool.submit(run_one, instance, recon_repo, job_name, p, plan["run_config"])
                    for p in partitions
                ]
                results = [f.result() for f in futures]
            for r in results:
                print(json.dumps(r), flush=True)
            if not all(r["success"] for r in results):
                ok = False
                break
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
