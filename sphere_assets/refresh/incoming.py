"""Change detection for an incoming directory of corpus files (pure: no Dagster).

The ``files`` corpus source reads a glob; a sensor calls :func:`scan` each tick with the state
it stored last time and gets back the new state plus the shards whose articles may have
changed. Rules:

* a file's state is ``(mtime_ns, size, sha256 of its bytes, shards)``; the content hash is
  recomputed only when mtime or size changed, and a file whose bytes are unchanged (``touch``)
  is not a change;
* the shards of a file are those its articles land in, computed exactly as ingest does
  (:func:`sphere_assets.lib.text.corpus.shard_of` of the article id, or of the record locator for
  id-less records that ingest counts as rejects): a txt/md/rst/py file is one article whose id is
  its path relative to the glob root; a jsonl/parquet file has one article per row;
* a changed file affects the union of its old and new shards (an article removed from a file
  must disappear from its old shard); a deleted file affects its old shards;
* files with unsupported suffixes are reported as ignored, never hashed (ingest would reject the
  whole glob: write files under a dot-name and rename them into place — globs skip dot-files);
* a different shard count invalidates the stored shards: every file counts as new;
* a jsonl/parquet file whose rows cannot be read counts as touching every shard (ingest names
  the problem; the sensor must not miss a shard meanwhile).

The state is JSON (:func:`dumps_state` / :func:`loads_state`): ``{"v": 1, "n_shards": N,
"generation": G, "files": {rel: [mtime_ns, size, sha256, [shards]]}}``. ``generation`` grows by
one per scan that found changes; callers put it in run keys so a re-evaluated tick (same stored
state) asks for the same runs, while a later change back to earlier bytes still gets new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from sphere_assets.lib.text.corpus import shard_of
from sphere_resources.corpus_sources import (
    TEXT_SUFFIXES,
    FieldNames,
    expand_glob,
    glob_root,
    records_of_file,
)

ROW_SUFFIXES = (".jsonl", ".parquet")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + ROW_SUFFIXES
STATE_VERSION = 1


@dataclass(frozen=True)
class FileState:
    mtime_ns: int
    size: int
    sha256: str
    shards: tuple[int, ...]

    def to_json(self) -> list:
        return [self.mtime_ns, self.size, self.sha256, list(self.shards)]

    @classmethod
    def from_json(cls, v: list) -> FileState:
        return cls(int(v[0]), int(v[1]), str(v[2]), tuple(int(s) for s in v[3]))


@dataclass
class IncomingState:
    n_shards: int
    generation: int = 0
    files: dict[str, FileState] = field(default_factory=dict)


@dataclass
class ScanResult:
    state: IncomingState
    new: list[str]
    changed: list[str]
    deleted: list[str]
    ignored: list[str]
    affected: dict[int, list[str]]  # shard -> relative paths (sorted) that touch it

    @property
    def has_changes(self) -> bool:
        return bool(self.new or self.changed or self.deleted)


def dumps_state(state: IncomingState) -> str:
    return json.dumps(
        {
            "v": STATE_VERSION,
            "n_shards": state.n_shards,
            "generation": state.generation,
            "files": {rel: st.to_json() for rel, st in sorted(state.files.items())},
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def loads_state(text: str | None, n_shards: int) -> IncomingState:
    """The stored state, or an empty one (no cursor yet, other version, other shard count)."""
    if not text:
        return IncomingState(n_shards)
    obj = json.loads(text)
    if obj.get("v") != STATE_VERSION or obj.get("n_shards") != n_shards:
        return IncomingState(n_shards, int(obj.get("generation", 0)))
    files = {rel: FileState.from_json(v) for rel, v in obj.get("files", {}).items()}
    return IncomingState(n_shards, int(obj.get("generation", 0)), files)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_shards(path: str, rel: str, n_shards: int, fields: FieldNames) -> tuple[int, ...]:
    """Shards the articles of one file land in (same keys as ingest's ShardSplitter)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TEXT_SUFFIXES:
        return (shard_of(rel, n_shards),)
    records = records_of_file(path, rel, fields)
    shards = set()
    for rec in records:
        key = rec.article_id if rec.article_id not in (None, "") else rec.locator
        shards.add(shard_of(str(key), n_shards))
    return tuple(sorted(shards))


def relative_paths(pattern: str) -> dict[str, str]:
    """rel (as ingest computes article ids) -> absolute path, for the files of ``pattern``."""
    root = str(glob_root(pattern))
    prefix = root.rstrip(os.sep) + os.sep if root not in ("", ".") else ""
    out = {}
    for path in expand_glob(pattern):
        rel = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        out[rel] = path
    return out


def scan(
    pattern: str, previous: IncomingState, n_shards: int, fields: FieldNames = FieldNames()
) -> ScanResult:
    """Compare the files of ``pattern`` with ``previous``; see the module doc for the rules."""
    if previous.n_shards != n_shards:
        previous = IncomingState(n_shards, previous.generation)
    current: dict[str, FileState] = {}
    new, changed, ignored = [], [], []
    affected: dict[int, set[str]] = {}
    for rel, path in sorted(relative_paths(pattern).items()):
        if os.path.splitext(path)[1].lower() not in SUPPORTED_SUFFIXES:
            ignored.append(rel)
            continue
        st = os.stat(path)
        old = previous.files.get(rel)
        if old is not None and (old.mtime_ns, old.size) == (st.st_mtime_ns, st.st_size):
            current[rel] = old
            continue
        digest = file_sha256(path)
        if old is not None and old.sha256 == digest:
            current[rel] = FileState(st.st_mtime_ns, st.st_size, digest, old.shards)
            continue
        try:
            shards = file_shards(path, rel, n_shards, fields)
        except (OSError, ValueError, KeyError):
            # unreadable rows (bad parquet, missing column): ingest will report it; until then
            # assume the file touches every shard rather than miss one
            shards = tuple(range(n_shards))
        current[rel] = FileState(st.st_mtime_ns, st.st_size, digest, shards)
        (changed if old is not None else new).append(rel)
        for s in set(shards) | set(old.shards if old else ()):
            affected.setdefault(s, set()).add(rel)
    deleted = sorted(set(previous.files) - set(current) - set(ignored))
    for rel in deleted:
        for s in previous.files[rel].shards:
            affected.setdefault(s, set()).add(rel)
    result_changes = bool(new or changed or deleted)
    state = IncomingState(n_shards, previous.generation + (1 if result_changes else 0), current)
    return ScanResult(
        state=state,
        new=new,
        changed=changed,
        deleted=deleted,
        ignored=ignored,
        affected={s: sorted(v) for s, v in sorted(affected.items())},
    )
