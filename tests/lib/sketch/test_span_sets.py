"""Sets of articles and spans: batches of articles within a memory budget."""

import pytest

from sphere_assets.lib.sketch import span_sets as ss
from sphere_assets.lib.sketch import synthetic_patches as sp

P = 10
SPAN = 64


@pytest.fixture(scope="module")
def corpus():
    full = sp.bundled_corpus(mode="random", seed=3)
    keep = list(range(0, len(full.article_ids), 3))
    return {full.article_ids[i]: full.article_patches(i) for i in keep}


def test_batching_within_a_tiny_budget(corpus):
    ids = sorted(corpus)[:5]
    c = sp.from_sequences([corpus[a] for a in ids])
    # a tiny memory budget splits the articles into many batches, each within budget
    batches = ss.article_batches(c.offsets, P, SPAN, 3 * 4 * (1 << P) * 3)
    assert batches[0][0] == 0 and batches[-1][1] == 5
    assert all(a < b for a, b in batches) and len(batches) > 1
    assert all(b1[1] == b2[0] for b1, b2 in zip(batches, batches[1:], strict=False))
