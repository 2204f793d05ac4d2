"""The warehouse as a Dagster resource; the storage logic itself lives in ``store.py``."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pyarrow as pa
from pydantic import Field

from sphere_resources.contracts import DEFAULT_WAREHOUSE_ROOT
from sphere_resources.store import (  # noqa: F401  (re-exported for callers)
    PartitionWriter,
    Warehouse,
    canonical_safetensors,
    read_safetensors,
)


class WarehouseResource(dg.ConfigurableResource):
    """Where materializations live: ``root`` holds one directory per asset (Hive layout)."""

    root: str = Field(
        default=DEFAULT_WAREHOUSE_ROOT,
        description="Warehouse root directory (relative paths resolve against the working directory).",
    )

    def store(self) -> Warehouse:
        return Warehouse(self.root)

    @contextmanager
    def partition_writer(self, asset: str, partition: str | None) -> Iterator[PartitionWriter]:
        with self.store().partition_writer(asset, partition) as w:
            yield w

    def read_table(
        self, asset: str, partition: str | None, columns: list[str] | None = None
    ) -> pa.Table:
        return self.store().read_table(asset, partition, columns)

    def iter_batches(self, asset: str, partition: str | None, batch_size: int = 1024, columns=None):
        return self.store().iter_batches(asset, partition, batch_size, columns)

    def read_tensors(self, asset: str, partition: str | None, stem: str):
        return self.store().read_tensors(asset, partition, stem)

    def partition_dir(self, asset: str, partition: str | None) -> Path:
        return self.store().partition_dir(asset, partition)
