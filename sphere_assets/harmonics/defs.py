"""The harmonics family's assets and checks, as sphere_assets/definitions.py collects them."""

from sphere_assets.harmonics.sh_basis import sh_basis, sh_basis_orthonormal

ASSETS = [sh_basis]
CHECKS = [sh_basis_orthonormal]
