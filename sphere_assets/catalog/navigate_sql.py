"""Cone queries in SQL: DuckDB table macros over the ``sphere_index`` view (the navigate
family's cone index), created in the catalog next to the views.

    select * from sphere_cone(60, 30, 5);                       -- theta, phi, aperture (degrees)
    select * from sphere_cone(60, 30, 5, s0 := 10, s1 := 40);   -- shell band 10..40
    select article_id, patch_index, title, text, angle_deg
      from sphere_cone_text(60, 30, 5) order by angle_deg limit 20;

The test is the navigator's (``lib/sphere/cones.py``): a point is inside iff
``ux*dx + uy*dy + uz*dz >= cos(aperture)`` in double precision (boundary ties inside), or the
aperture is >= 180 degrees; ``d = (sin t cos p, sin t sin p, cos t)``. A ``uz`` range (the cone's
colatitude band, padded by 1e-12) is tested first: sphere_index rows are sorted by HEALPix
RING cell (then shell band), i.e. by decreasing ``uz`` ring by ring, so DuckDB can skip row
groups by their min/max. ``sphere_cone_text`` adds the patch text (blt_patches) and article title
(raw_articles).
"""

from __future__ import annotations

import os

SPHERE_INDEX_VIEW = "sphere_index"

CONE_MACRO = """
CREATE OR REPLACE MACRO sphere_cone(theta_deg, phi_deg, aperture_deg, s0 := 0, s1 := 2147483647)
AS TABLE
WITH q AS (
    SELECT sin(radians(theta_deg)) * cos(radians(phi_deg)) AS dx,
           sin(radians(theta_deg)) * sin(radians(phi_deg)) AS dy,
           cos(radians(theta_deg)) AS dz,
           cos(radians(aperture_deg)) AS cos_a,
           aperture_deg >= 180 AS everything,
           cos(least(radians(theta_deg) + radians(aperture_deg), pi())) - 1e-12 AS z_lo,
           cos(greatest(radians(theta_deg) - radians(aperture_deg), 0.0)) + 1e-12 AS z_hi
)
SELECT i.article_id, i.patch_index, i.shard, i."row", i.shell, i.theta, i.phi,
       degrees(acos(greatest(-1.0, least(1.0, i.ux * q.dx + i.uy * q.dy + i.uz * q.dz))))
           AS angle_deg
FROM sphere_index AS i, q
WHERE i.shell BETWEEN s0 AND s1
  AND (q.everything OR (i.uz BETWEEN q.z_lo AND q.z_hi
                        AND i.ux * q.dx + i.uy * q.dy + i.uz * q.dz >= q.cos_a))
"""

CONE_TEXT_MACRO = """
CREATE OR REPLACE MACRO sphere_cone_text(theta_deg, phi_deg, aperture_deg, s0 := 0,
                                         s1 := 2147483647)
AS TABLE
SELECT c.*, a.title, p.text
FROM sphere_cone(theta_deg, phi_deg, aperture_deg, s0 := s0, s1 := s1) AS c
LEFT JOIN blt_patches AS p
  ON p.shard = c.shard AND p.article_id = c.article_id AND p.patch_index = c.patch_index
LEFT JOIN raw_articles AS a
  ON a.shard = c.shard AND a.article_id = c.article_id
"""


def create_cone_macros(catalog_path: str | os.PathLike, views: list[str]) -> list[str]:
    """Add the cone macros to the catalog file when it has the sphere_index view (and, for
    sphere_cone_text, blt_patches and raw_articles); the names of the macros created."""
    if SPHERE_INDEX_VIEW not in views:
        return []
    import duckdb  # deferred: every Dagster step process loads the catalog family

    made = ["sphere_cone"]
    con = duckdb.connect(str(catalog_path))
    try:
        con.execute(CONE_MACRO)
        if {"blt_patches", "raw_articles"} <= set(views):
            con.execute(CONE_TEXT_MACRO)
            made.append("sphere_cone_text")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return made
