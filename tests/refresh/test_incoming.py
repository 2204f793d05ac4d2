"""Change detection for the incoming-files sensor (pure), against hand-computed shards."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from sphere_assets.lib.text.corpus import shard_of
from sphere_assets.refresh.incoming import IncomingState, dumps_state, loads_state, scan

N = 4


def test_new_touch_change_delete_and_state_round_trip(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.md").write_text("beta")
    (tmp_path / "x.bin").write_bytes(b"\0")
    pattern = str(tmp_path / "**" / "*")
    first = scan(pattern, IncomingState(N), N)
    assert first.new == ["a.txt", "d/b.md"] and first.ignored == ["x.bin"]
    assert first.affected == {
        s: sorted(r for r in ("a.txt", "d/b.md") if shard_of(r, N) == s)
        for s in {shard_of("a.txt", N), shard_of("d/b.md", N)}
    }
    state = loads_state(dumps_state(first.state), N)
    assert state == first.state and state.generation == 1

    os.utime(tmp_path / "a.txt", ns=(1, 2 * 10**9))  # new mtime, same bytes
    touched = scan(pattern, state, N)
    assert not touched.has_changes and touched.state.generation == 1
    assert touched.state.files["a.txt"].mtime_ns == 2 * 10**9

    (tmp_path / "a.txt").write_text("alpha, revised")
    (tmp_path / "d" / "b.md").unlink()
    changed = scan(pattern, touched.state, N)
    assert changed.changed == ["a.txt"] and changed.deleted == ["d/b.md"]
    assert set(changed.affected) == {shard_of("a.txt", N), shard_of("d/b.md", N)}
    assert changed.state.generation == 2


def test_row_files_affect_old_and_new_article_shards(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"id": i, "text": i}) for i in ("p", "q")) + "\n")
    pattern = str(tmp_path / "*")
    first = scan(pattern, IncomingState(N), N)
    assert first.state.files["rows.jsonl"].shards == tuple(
        sorted({shard_of("p", N), shard_of("q", N)})
    )
    rows.write_text(json.dumps({"id": "r", "text": "r"}) + "\n{not json\n")
    second = scan(pattern, first.state, N)
    # p and q left their shards, r arrived, the broken line is sharded by its locator
    want = {shard_of(k, N) for k in ("p", "q", "r", "rows.jsonl:2")}
    assert set(second.affected) == want


def test_unreadable_parquet_touches_every_shard_and_shard_count_change_rescans(tmp_path):
    pq.write_table(pa.table({"id": ["1"], "body": ["no text column"]}), tmp_path / "t.parquet")
    pattern = str(tmp_path / "*")
    first = scan(pattern, IncomingState(N), N)
    assert set(first.affected) == set(range(N))
    assert loads_state(dumps_state(first.state), N + 1).files == {}  # other shard count
    again = scan(pattern, loads_state(dumps_state(first.state), 8), 8)
    assert again.new == ["t.parquet"]
