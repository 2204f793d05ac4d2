"""The placements family's assets and checks, as sphere_assets/definitions.py collects them."""

from sphere_assets.placements.shell_placements import (
    shell_placements,
    shell_placements_balanced,
    shell_placements_coordinates_valid,
)

ASSETS = [shell_placements]
CHECKS = [shell_placements_balanced, shell_placements_coordinates_valid]
