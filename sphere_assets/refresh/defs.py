"""The refresh family's jobs, schedules and sensors, as sphere_assets/definitions.py collects them.

Jobs are derived from the assets (one per family and partitioning, plus the cross-family
shards/global/band-limit jobs), so they are built from the full asset list: ``jobs_for(ALL_ASSETS)``.
"""

from sphere_assets.refresh.automation import automation_sensor
from sphere_assets.refresh.jobs import family_jobs as jobs_for
from sphere_assets.refresh.schedules import nightly_shard_refresh
from sphere_assets.refresh.sensors import incoming_files_sensor

SCHEDULES = [nightly_shard_refresh]
SENSORS = [incoming_files_sensor, automation_sensor()]

__all__ = ["SCHEDULES", "SENSORS", "jobs_for"]
