"""Loading the code location (every Dagster step and check subprocess does it) imports no
torch and no JAX: those load inside the asset bodies that use them (sphere_assets/core/lazy.py).
Nor numba (the sketch kernels load on their first call), DuckDB, psycopg or scipy (imported in
the functions that use them). The time and memory are measured by bench/code_location.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "jax", "jaxlib", "thrml", "equinox", "matplotlib")
# deferred as well: together ~0.6 s and ~80 MB of every step process
DEFERRED = ("numba", "llvmlite", "duckdb", "psycopg", "scipy")

PROBE = """
import json, sys
import sphere_assets.definitions
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.fixture(scope="module")
def loaded_packages() -> set[str]:
    """Top-level packages in sys.modules after a fresh process loads the code location (one
    subprocess for both checks below)."""
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_code_location_loads_without_torch_or_jax(loaded_packages):
    assert "sphere_assets" in loaded_packages and "dagster" in loaded_packages
    assert sorted(loaded_packages & set(HEAVY)) == []


def test_code_location_loads_without_numba_duckdb_psycopg_or_scipy(loaded_packages):
    assert sorted(loaded_packages & set(DEFERRED)) == []


def test_sketch_kernels_load_numba_on_first_call_and_hash_like_mmh3():
    """The deferred kernels are the compiled ones: numba appears only at the first call, and the
    hashes equal the mmh3 C extension's."""
    probe = (
        "import sys, mmh3, numpy as np\n"
        "from sphere_assets.lib.sketch import hllset as hs, ngrams as ng\n"
        "assert 'numba' not in sys.modules\n"
        "keys = [b'', b'a', b'patch', b'x' * 37]\n"
        "data = np.frombuffer(b''.join(keys), dtype=np.uint8)\n"
        "offsets = np.cumsum([0] + [len(k) for k in keys])\n"
        "got = hs.hash64_buffer(data, offsets).tolist()\n"
        "assert 'numba' in sys.modules\n"
        "want = [mmh3.hash64(k, seed=0, signed=False)[0] for k in keys]\n"
        "assert got == want, (got, want)\n"
        "assert type(ng.kk).__name__ == 'DeferredModule'\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_deferred_module_imports_on_first_use():
    probe = (
        "import sys\n"
        "from sphere_assets.core.lazy import lazy_module\n"
        "m = lazy_module('sphere_assets.lib.text.torch_runtime')\n"
        "assert 'torch' not in sys.modules\n"
        "m.resolve_device('cpu')\n"
        "assert 'torch' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
