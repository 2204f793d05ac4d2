-- 0001: the published catalog. One row per article / patch / patch embedding / shell placement,
-- every table keyed by shard first: a shard is published by deleting its rows and COPYing the new
-- ones in one transaction (sphere_assets/compute/pg_publish.py). Unqualified names: the runner
-- sets search_path to the catalog schema (default "sphere").
-- article_id uses the "C" collation: byte-order comparisons make the keys cheap to index and
-- give the same order as Parquet/DuckDB.
-- The patch-level tables index (shard, article_id, patch_index) without a UNIQUE constraint: a
-- publish deletes a shard and re-inserts the same keys in one transaction, and a unique index
-- then re-checks every deleted duplicate in the heap (measured: ~40% slower COPY). Uniqueness is
-- a property of the sources (blt_patches is unique per article and patch_index by construction)
-- and the postgres_catalog check verifies it per published shard.

CREATE TABLE articles (
    shard       integer NOT NULL,
    article_id  text COLLATE "C" NOT NULL,
    title       text NOT NULL,
    text        text NOT NULL,
    source      text NOT NULL,
    n_bytes     bigint NOT NULL,
    url         text,
    PRIMARY KEY (shard, article_id)
);
-- look up an article by id without knowing its shard
CREATE INDEX articles_article_id_idx ON articles (article_id);

CREATE TABLE patches (
    shard          integer NOT NULL,
    article_id     text COLLATE "C" NOT NULL,
    patch_index    integer NOT NULL,
    byte_start     bigint NOT NULL,
    byte_len       integer NOT NULL,
    patch          bytea NOT NULL,
    text           text NOT NULL,
    mean_entropy   real NOT NULL,
    max_entropy    real NOT NULL,
    first_entropy  real NOT NULL
);
-- the shard's rows (DELETE) and the patches of an article in order (equality, then patch_index)
CREATE INDEX patches_key_idx ON patches (shard, article_id, patch_index);

CREATE TABLE embeddings (
    shard        integer NOT NULL,
    article_id   text COLLATE "C" NOT NULL,
    patch_index  integer NOT NULL,
    prominence   real NOT NULL,
    embedding    real[] NOT NULL
);
CREATE INDEX embeddings_key_idx ON embeddings (shard, article_id, patch_index);
-- the most prominent patches of a shard: an ordered index scan, no sort
CREATE INDEX embeddings_prominence_idx ON embeddings (shard, prominence DESC);

CREATE TABLE placements (
    shard          integer NOT NULL,
    article_id     text COLLATE "C" NOT NULL,
    patch_index    integer NOT NULL,
    shell          integer NOT NULL,
    r              double precision NOT NULL,
    theta          double precision NOT NULL,
    phi            double precision NOT NULL,
    x              double precision,
    y              double precision,
    z              double precision,
    prominence     real,
    promotions     integer,
    lateral_moves  integer
);
CREATE INDEX placements_key_idx ON placements (shard, article_id, patch_index);
-- shell occupancy (index-only scan) and the patches of one shell
CREATE INDEX placements_shell_idx ON placements (shell, shard);
