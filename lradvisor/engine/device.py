"""Where and how fast a run trains: the device, its precision, and the memory layout of images.

One code path on every device: autocast on the device's own type, the same loader and the same loop. The
choices are made here, once, and recorded by the run (`device_name`, `precision_used`, `channels_last_used`).
"""

import os
import platform

import torch

from lradvisor.config import DEVICES
from lradvisor.errors import UsageError


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; valid: {DEVICES}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}; valid: {DEVICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for but CUDA is not available here; use --device auto or cpu")
    return dev


def native_bf16(device):
    """True where bf16 matrix math runs in hardware. On CPUs torch would also run bf16 on plain AVX-512 or
    AVX2 by converting back and forth, which is slower than fp32: that emulated kind does not count."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch has no emulation to exclude
            return torch.cuda.is_bf16_supported()
    if platform.machine() in ("x86_64", "AMD64"):  # AVX512-BF16 (Cooper Lake, Zen 4+) or AMX (Sapphire Rapids+)
        cpu = torch.cpu
        has = bool(
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
        return has and _isa_allows_bf16()
    if platform.machine() in ("aarch64", "arm64"):  # Armv8.6 BF16 (Graviton 3+, Neoverse V1/N2)
        try:
            with open("/proc/cpuinfo") as f:
                return any(line.startswith("Features") and " bf16" in line for line in f)
        except OSError:
            return False
    return False


def _isa_allows_bf16():
    """The CPU has the instructions, but this process may be told not to use them: ATEN_CPU_CAPABILITY (torch's
    kernels) or ONEDNN_MAX_CPU_ISA (oneDNN's convolutions) below AVX-512 make bf16 emulated again (measured
    here: bf16 at 2.9 images/s against fp32's 46 with both set to AVX2). Setting both is also how a CPU without
    AVX-512 is imitated on one that has it."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    return isa in ("ALL", "DEFAULT") or any(k in isa for k in ("BF16", "FP16", "AMX", "AVX10"))


def pick_precision(name, device):
    """auto: bf16 where the hardware has it, else fp32."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def pick_channels_last(name, device):
    """auto: on where it was measured faster: CUDA, and CPUs with native bf16 (in fp32 too: 109 vs 85 images/s
    on this project's 2-core EPYC)."""
    if name == "auto":
        return device.type == "cuda" or native_bf16(device)
    return name == "1"
