"""Collects every family's data contract, so the registry in ``sphere_resources.contracts`` is
complete whenever any part of ``sphere_assets`` is imported (the storage layer looks contracts up
by asset name)."""

from sphere_assets.harmonics import contract as harmonics_contract
from sphere_assets.ingest import contract as ingest_contract
from sphere_assets.navigate import contract as navigate_contract
from sphere_assets.ngrams import contract as ngrams_contract
from sphere_assets.patching import contract as patching_contract
from sphere_assets.placements import contract as placements_contract
from sphere_resources.contracts import CONTRACTS

FAMILY_CONTRACTS = (
    ingest_contract,
    patching_contract,
    harmonics_contract,
    ngrams_contract,
    placements_contract,
    navigate_contract,
)
__all__ = ["CONTRACTS", "FAMILY_CONTRACTS"]
