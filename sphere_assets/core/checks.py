"""Asset checks that report per partition.

A shard asset runs a partition range in one run (``BackfillPolicy.single_run``), and so do its
checks. An ``AssetCheckResult`` in such a run is recorded without a partition, so the last
shard's pass would hide an earlier shard's failure. Dagster 1.13 keeps check executions per
partition when the check has a ``partitions_def`` (the run plans one row per partition of its
range) and each ``AssetCheckEvaluation`` names its ``partition``; this module builds such
checks and emits one evaluation per partition, each with its own pass/fail and metadata.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping

import dagster as dg

# not exported at the top level; the same record Dagster fills for an AssetCheckResult
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from sphere_assets.core.partitions import shard_partitions


def _quietly(build: Callable):
    """Run ``build`` without Dagster's PreviewWarning for partitioned check specs: partitioned
    checks are the feature this module exists for, and the warning would repeat on every load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return build()


def partitioned_check(partitions_def: dg.PartitionsDefinition, **kwargs) -> Callable:
    """``@dg.asset_check(...)`` partitioned by ``partitions_def`` (the checked asset's own, e.g.
    band limits). The decorated function yields
    ``partition_check_results(context, {key: AssetCheckResult})``."""

    def decorate(fn):
        return _quietly(lambda: dg.asset_check(partitions_def=partitions_def, **kwargs)(fn))

    return decorate


def shard_check(**kwargs) -> Callable:
    """:func:`partitioned_check` by shard, like the shard asset it checks."""
    return partitioned_check(shard_partitions, **kwargs)


def shard_check_spec(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    """A check evaluated inside its shard asset's step, partitioned by shard."""
    return _quietly(
        lambda: dg.AssetCheckSpec(
            name, asset=asset, description=description, partitions_def=shard_partitions
        )
    )


def _target_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The partition's latest materialization, which the UI shows the evaluation against."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    mat = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=mat.run_id, storage_id=mat.storage_id, timestamp=mat.timestamp
    )


def _resolve_spec(specs: Mapping[str, dg.AssetCheckSpec], result: dg.AssetCheckResult):
    if result.check_name is not None:
        return specs[result.check_name]
    if len(specs) != 1:
        raise dg.DagsterInvariantViolationError(
            f"a check result without check_name, but the step has checks {sorted(specs)}"
        )
    return next(iter(specs.values()))


def _summary(results: Mapping[str, dg.AssetCheckResult]) -> dg.AssetCheckResult:
    failed = [key for key, r in results.items() if not r.passed]
    return dg.AssetCheckResult(
        passed=bool(results) and not failed,
        metadata={
            "partitions": ",".join(results) or "no partitions on disk",
            "failed_partitions": ",".join(failed) or "-",
        },
    )


def partition_check_results(
    context: dg.AssetCheckExecutionContext | dg.AssetExecutionContext,
    results: Mapping[str, dg.AssetCheckResult],
) -> Iterator[dg.Output | dg.AssetCheckEvaluation]:
    """The events of a check over several partitions: the check's output once, then one
    ``AssetCheckEvaluation`` per partition key of ``results`` (its own passed/metadata, against
    that partition's latest materialization). A run without partitions (a check launched on its
    own) checks what is on disk and also resolves its unpartitioned execution with a summary
    (passed when every partition passed). A failed blocking evaluation fails the step after all
    partitions are recorded, as Dagster does for one result."""
    op_context = context.op_execution_context
    assets_def = op_context.assets_def
    specs = {spec.name: spec for spec in assets_def.check_specs}
    outputs = {spec.key: name for name, spec in assets_def.check_specs_by_output_name.items()}
    run_partitioned = op_context.has_partition_key or op_context.has_partition_key_range
    by_spec: dict[dg.AssetCheckKey, dict[str, dg.AssetCheckResult]] = {}
    for key, result in results.items():
        by_spec.setdefault(_resolve_spec(specs, result).key, {})[key] = result
    for spec in assets_def.check_specs:
        if spec.key not in op_context.selected_asset_check_keys:
            continue  # not requested in this run: nothing planned, nothing to record
        yield dg.Output(None, output_name=outputs[spec.key])
        own = by_spec.get(spec.key, {})
        if spec.partitions_def is not None:
            for key, result in own.items():
                yield _evaluation(op_context.instance, spec, result, key)
        if not run_partitioned or spec.partitions_def is None:
            yield _evaluation(op_context.instance, spec, _summary(own), None)


def _evaluation(
    instance: dg.DagsterInstance,
    spec: dg.AssetCheckSpec,
    result: dg.AssetCheckResult,
    partition: str | None,
) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=result.passed,
        metadata=result.metadata,
        target_materialization_data=(
            _target_materialization(instance, spec.asset_key, partition) if partition else None
        ),
        severity=result.severity,
        description=result.description,
        blocking=spec.blocking,
        partition=partition,
    )
