"""The placements family's assets and checks, as sphere_assets/definitions.py collects them."""

from sphere_assets.placements.shell_placements import (
    shell_placements,
    shell_placements_balanced,
    shell_placements_coordinates_valid,
)
from sphere_assets.placements.sphere_map import sphere_map, sphere_map_beats_pca3

ASSETS = [sphere_map, shell_placements]
CHECKS = [sphere_map_beats_pca3, shell_placements_balanced, shell_placements_coordinates_valid]
