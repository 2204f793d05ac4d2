"""The UI catalog: every asset registered in sphere_assets/definitions.py — including families
added later — is documented (description, group, kinds, family tag, owners, column schema)."""

import dagster as dg
import pytest

from sphere_resources.contracts import CONTRACTS
from tests.defs_graph import ASSET_KEYS
from tests.defs_graph import spec_of as _spec


@pytest.mark.parametrize("key", ASSET_KEYS, ids=lambda k: k.to_user_string())
def test_every_asset_is_documented_for_the_ui(key):
    _, spec = _spec(key)
    name = key.to_user_string()
    assert spec.description and len(spec.description) > 20, f"{name}: description"
    assert spec.group_name and spec.group_name != "default", f"{name}: group"
    assert spec.kinds, f"{name}: kinds"
    assert spec.tags.get("family"), f"{name}: tag 'family'"
    assert spec.owners, f"{name}: owners"
    schema = spec.metadata.get("dagster/column_schema")
    schema = getattr(schema, "schema", schema)  # TableSchemaMetadataValue or TableSchema
    assert isinstance(schema, dg.TableSchema) and schema.columns, f"{name}: column schema"
    contract = CONTRACTS.get(key.path[-1])
    if contract is not None and contract.schema is not None:
        assert [c.name for c in schema.columns][: len(contract.schema)] == contract.schema.names
