"""Launch runs of sphere jobs through the instance's executor, stage by stage (test helper).

    python -m tests.refresh.celery_driver plan.json

plan.json: ``{"stages": [[job_name, [tags, ...], run_config], ...]}`` — one run per tags dict
(``{"dagster/partition": "0"}``, a partition range, or ``{}``).
Runs go one after the other (Celery's ``rpc://`` result backend is not safe to share between
threads of one process); the steps still spread over the workers, because RabbitMQ hands each
new task to the next idle consumer. A stage starts when the previous one succeeded. Prints one JSON line per run and exits non-zero
if any run failed. It runs as its own process because the executor is chosen when
``sphere_assets.definitions`` is imported (``SPHERE_EXECUTOR=celery``).
"""

import json
import sys
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

REPO = Path(__file__).resolve().parents[2]


def run_one(instance, recon_repo, job_name: str, tags: dict, run_config: dict) -> dict:
    with dg.execute_job(
        recon_repo.get_reconstructable_job(job_name),
        instance=instance,
        run_config=run_config,
        tags=tags,
    ) as result:
        return {
            "job": job_name,
            "tags": tags,
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
        for job_name, tag_sets, run_config in plan["stages"]:
            results = [run_one(instance, recon_repo, job_name, t, run_config) for t in tag_sets]
            for r in results:
                print(json.dumps(r), flush=True)
            if not all(r["success"] for r in results):
                ok = False
                break
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
