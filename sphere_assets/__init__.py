"""The sphere code location: asset families (one folder each), pure compute in ``lib``."""

from sphere_assets import contracts as _contracts  # noqa: F401  (registers every data contract)
