"""The warehouse as a Dagster resource; the storage logic itself lives in ``store.py``."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from sphere_resources.contracts import DEFAULT_WAREHOUSE_ROOT
from sphere_resources.store import Warehouse  # noqa: F401  (re-exported beside the resource)


class WarehouseResource(dg.ConfigurableResource):
    """Where materializations live: ``root`` holds one directory per asset (Hive layout).

    Reads and writes go through :meth:`store` (a :class:`~sphere_resources.store.Warehouse`)."""

    root: str = Field(
        default=DEFAULT_WAREHOUSE_ROOT,
        description="Warehouse root directory (relative paths resolve against the working directory).",
    )

    def store(self) -> Warehouse:
        return Warehouse(self.root)

    def partition_dir(self, asset: str, partition: str | None) -> Path:
        return self.store().partition_dir(asset, partition)
