"""The ingest family's assets and checks, as sphere_assets/definitions.py collects them."""

from sphere_assets.ingest.raw_articles import raw_articles, raw_articles_ids_unique_and_sharded

ASSETS = [raw_articles]
CHECKS = [raw_articles_ids_unique_and_sharded]
