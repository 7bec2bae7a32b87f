"""What the machine can run fast: CPU instruction sets and the int8 scheme that follows.

ONNX Runtime's CPU kernels for int8 (MLAS) multiply uint8 activations by int8 weights. How
fast and how exactly depends on the instruction set:

* x86 with AVX-512 VNNI, AVX-VNNI or AMX: u8 x s8 dot products accumulate straight into int32.
  u8 activations with full 8-bit s8 weights are exact and fast.
* x86 with only AVX2 / AVX-512 (no VNNI): ``vpmaddubsw`` adds pairs of u8 x s8 products into a
  saturating int16, so full-range weights can overflow. Weights limited to 7 bits
  (``reduce_range``) cannot. s8 activations only fuse where MLAS has s8 x s8 kernels (AMX and
  ARM do; plain AVX2 does not, which is why s8 QDQ models there run slower than fp32).
* ARM64 (dot-product extension ``asimddp`` or not): u8 activations fuse too; they are kept
  because an asymmetric uint8 zero point of 0 after a Relu lets ONNX Runtime drop the Relu.
* CUDA / TensorRT: symmetric int8 everywhere (TensorRT rejects non-zero zero points).
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    """The CPU facts that decide the int8 scheme (read from /proc/cpuinfo on Linux)."""

    arch: str  # "x86_64", "aarch64", ...
    model: str
    flags: frozenset[str]

    @property
    def vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & self.flags)

    @property
    def amx_int8(self) -> bool:
        return "amx_int8" in self.flags

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def arm_dot(self) -> bool:
        return "asimddp" in self.flags

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i686", "x86")

    @property
    def is_arm(self) -> bool:
        return self.arch in ("aarch64", "arm64")

    def isa(self) -> str:
        """The best int8-relevant instruction set, as a short name for reports."""
        if self.is_x86:
            if self.amx_int8:
                return "amx"
            if self.vnni:
                return "vnni"
            if self.avx512:
                return "avx512"
            return "avx2" if self.avx2 else "sse"
        if self.is_arm:
            return "arm-dot" if self.arm_dot else "arm"
        return self.arch

    def summary(self) -> dict[str, object]:
        interesting = sorted(
            f
            for f in self.flags
            if f.startswith(("avx", "amx", "asimd", "sve", "i8mm", "fma", "f16c"))
        )
        return {"arch": self.arch, "model": self.model, "isa": self.isa(), "flags": interesting}


@functools.lru_cache(maxsize=1)
def detect_cpu() -> CpuFeatures:
    """Read the CPU's model and feature flags; unknown platforms get an empty flag set."""
    arch = platform.machine().lower() or "unknown"
    model, flags = platform.processor() or arch, set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
            elif key in ("model name", "cpu model") and model in (arch, ""):
                model = value.strip()
    elif arch in ("arm64", "aarch64") and platform.system() == "Darwin":
        flags = {"asimddp"}  # every Apple silicon core has the dot-product extension
    return CpuFeatures(arch=arch, model=model, flags=frozenset(flags))


@dataclasses.dataclass(frozen=True)
class Int8Scheme:
    """Types and placement of static int8 quantization for one target."""

    target: str  # "cpu" or "cuda"
    isa: str
    activation_type: str  # "uint8" (asymmetric) or "int8" (symmetric)
    reduce_range: bool  # 7-bit weights
    why: str


def int8_scheme(target: str = "cpu", cpu: CpuFeatures | None = None) -> Int8Scheme:
    """The scheme ONNX Runtime runs fastest and exactly on ``target`` (this machine's CPU)."""
    if target in ("cuda", "tensorrt"):
        return Int8Scheme(
            target, target, "int8", False, "TensorRT and CUDA want symmetric int8 (zero point 0)"
        )
    cpu = cpu or detect_cpu()
    isa = cpu.isa()
    if cpu.is_arm:
        return Int8Scheme(
            "cpu", isa, "uint8", False, f"{isa}: u8 QDQ groups fuse; Relu after them is free"
        )
    if cpu.vnni or cpu.amx_int8:
        return Int8Scheme(
            "cpu", isa, "uint8", False, f"{isa}: u8 x s8 accumulates in int32, no overflow"
        )
    return Int8Scheme(
        "cpu",
        isa,
        "uint8",
        True,
        f"{isa} without VNNI: u8 x s8 pairs saturate int16, so weights use 7 bits",
    )
