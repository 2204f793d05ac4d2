"""JAX device selection as a Dagster resource.

JAX reads ``JAX_PLATFORMS`` and ``XLA_PYTHON_CLIENT_PREALLOCATE`` when its backend first
initializes, so :meth:`JaxDeviceResource.setup_for_execution` sets them before anything in the
step touches a device. Dagster's multiprocess executor starts a fresh process per step, and each
one runs this setup itself; in-process execution reuses an already initialized backend, which is
fine as long as it offers the requested platform (checked, not assumed).
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

PLATFORMS = ("cpu", "gpu", "tpu", "auto")


class JaxDeviceError(RuntimeError):
    pass


def configure_jax(platform: str, enable_x64: bool, preallocate: bool) -> None:
    """Set JAX's process-level options; must run before the first device query."""
    if platform not in PLATFORMS:
        raise JaxDeviceError(f"JAX platform '{platform}' is not one of {PLATFORMS}")
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true" if preallocate else "false"
    if platform == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_enable_x64", bool(enable_x64))


def select_device(platform: str, device_index: int):
    """The requested device, or a JaxDeviceError that says what is available instead."""
    import jax

    if platform == "auto":
        devices = jax.devices()
    else:
        try:
            devices = jax.devices(platform)
        except RuntimeError as exc:
            available = sorted({d.platform for d in jax.devices()})
            raise JaxDeviceError(
                f"JAX platform '{platform}' requested but not available (available: {available}); "
                "set platform='auto' to fall back to what exists"
            ) from exc
    if not 0 <= device_index < len(devices):
        raise JaxDeviceError(
            f"JAX device index {device_index} out of range: platform '{platform}' has {len(devices)} device(s)"
        )
    return devices[device_index]


class JaxDeviceResource(dg.ConfigurableResource):
    """Which accelerator JAX computations run on (cpu | gpu | tpu | auto)."""

    # str, not Literal: an EnvVar placeholder must pass pydantic at load; configure_jax validates.
    platform: str = Field(
        default="cpu",
        description="JAX platform: cpu | gpu | tpu | auto ('auto' takes JAX's default backend).",
    )
    device_index: int = Field(default=0, description="Index into the platform's devices.")
    enable_x64: bool = Field(
        default=True, description="Enable float64 (needed by the SH transforms)."
    )
    preallocate: bool = Field(default=False, description="Let XLA preallocate most GPU memory.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        configure_jax(self.platform, self.enable_x64, self.preallocate)

    def device(self):
        configure_jax(self.platform, self.enable_x64, self.preallocate)
        return select_device(self.platform, self.device_index)

    def local_devices(self) -> list:
        """All local devices of the chosen platform (for sharding points across them)."""
        import jax

        dev = self.device()
        return [d for d in jax.local_devices() if d.platform == dev.platform]

    def metadata(self) -> dict[str, str]:
        dev = self.device()
        return {
            "jax/platform": dev.platform,
            "jax/device": str(dev),
            "jax/device_kind": getattr(dev, "device_kind", dev.platform),
            "jax/x64": str(self.enable_x64),
        }
