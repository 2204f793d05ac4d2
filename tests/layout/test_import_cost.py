"""Loading the code location (every Dagster step and check subprocess does it) imports no
torch and no JAX: those load inside the asset bodies that use them (sphere_assets/core/lazy.py).
The time and memory are measured by bench/code_location.py."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "jax", "jaxlib", "thrml", "equinox", "matplotlib")

PROBE = f"""
import json, sys
import sphere_assets.definitions
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
"""


def test_code_location_loads_without_torch_or_jax():
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


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
