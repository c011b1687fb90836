"""GPU facts and the MXNet 1.9.1 build choice.

One read-only Fact (`GPU_FACT`) probes the driver, the GPUs, the installed CUDA toolkits
and libcuda in one bash command; `parse_gpu_probe` turns its output into `GpuFacts`.
`choose_mxnet_build` then decides which MXNet 1.9.1 wheel can run on the host, or refuses
with a reason and advice *before* anything is installed.

Standard library only (not even `packaging`): `scripts/gpu-check` imports this module on
bare GPU machines that have nothing but Python.

Longer than 400 lines: gpu-check loads this one file by its path (a bare machine cannot import
the role's package, whose __init__ needs the engine), so the probe, the wheel table and the
choice stay in one standard-library module.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fleet.engine import hostscripts
from fleet.engine.facts import Fact

MXNET_VERSION = "1.9.1"
CPU_PACKAGE = "mxnet"
CC = tuple[int, int]

# --------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------
# Every section starts with a marker line `== gpu.<name> key=value ... ==`, so a parser can
# find its pieces even when several outputs are concatenated.  The command:
#   - runs in a subshell with errexit/nounset/pipefail off, so a batched probe that uses
#     `set -euo pipefail` is never aborted by it, and ends with `true` (always exit 0);
#   - captures each tool's exit status instead of failing, because "nvidia-smi missing"
#     (rc 127) and "driver not loaded" (rc 9) are facts, not errors;
#   - re-queries without compute_cap when the driver predates that field (R470 and older
#     answer 'Field "compute_cap" is not a valid field to query.' with rc 2);
#   - keeps only the head of plain `nvidia-smi`, whose banner carries "CUDA Version"
#     (the driver's maximum CUDA, not the toolkit's);
#   - lists NVIDIA display/3D controllers from sysfs (no lspci needed, no forks), to tell
#     "CPU machine" from "GPU machine whose driver is missing";
#   - wraps nvidia-smi in `timeout`, because a wedged driver can hang it for minutes, and
#     skips the second call after a timeout;
#   - reads nothing from stdin (</dev/null): the batched probe is fed to `bash -s`, and a
#     command reading stdin would swallow the rest of the script.
# It lives in roles/mxnet/files/gpu-probe.sh, where shellcheck reads it.
COMMAND = hostscripts.read(Path(__file__).parent / "files" / "gpu-probe.sh").removesuffix("\n")


# --------------------------------------------------------------------------------------
# Parsed facts
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gpu:
    name: str
    driver_version: str
    # (major, minor) when known; otherwise the raw text ("[N/A]", "unknown").
    compute_cap: CC | str
    memory_mib: int
    # "nvidia-smi" when the driver reported it, "name" when looked up from the model name
    # (drivers before R510 cannot report compute_cap), "unknown" otherwise.
    cc_source: str = "nvidia-smi"


@dataclass(frozen=True)
class GpuFacts:
    gpus: list[Gpu] = field(default_factory=list)
    driver_cuda: str | None = None      # "CUDA Version" of the nvidia-smi banner: driver's max
    toolkits: list[str] = field(default_factory=list)   # installed CUDA toolkits, "X.Y"
    libcuda: bool = False               # libcuda.so.1 (the driver's user-space library) found
    error: str | None = None            # nvidia-smi exists but failed (driver not loaded, ...)
    driver_version: str | None = None
    smi: bool = False                   # nvidia-smi is installed
    pci_gpus: int | None = None         # NVIDIA display/3D controllers on the PCI bus

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)


@dataclass(frozen=True)
class Section:
    name: str
    attrs: dict[str, str]
    body: str


_MARKER = re.compile(r"^== gpu\.([a-z-]+)((?: [a-z]+=\S*)*) ==$")


def split_sections(text: str) -> list[Section]:
    """Cut probe output at its `== gpu.<name> ... ==` markers; text before the first is ignored."""
    sections: list[Section] = []
    name: str | None = None
    attrs: dict[str, str] = {}
    body: list[str] = []
    for line in text.splitlines():
        m = _MARKER.match(line.rstrip())
        if m:
            if name is not None:
                sections.append(Section(name, attrs, "\n".join(body).strip("\n")))
            name = m.group(1)
            attrs = dict(kv.split("=", 1) for kv in m.group(2).split())
            body = []
        elif name is not None:
            body.append(line)
    if name is not None:
        sections.append(Section(name, attrs, "\n".join(body).strip("\n")))
    return sections


def _int_prefix(text: str) -> int:
    m = re.match(r"\s*(\d+)", text)
    return int(m.group(1)) if m else 0


def parse_compute_cap(text: str) -> CC | str:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(m.group(1)), int(m.group(2))) if m else text.strip()


def parse_query_rows(text: str, *, with_compute_cap: bool = True) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=name,driver_version[,compute_cap],memory.total
    --format=csv,noheader`, e.g. `Tesla T4, 535.104.05, 7.5, 15360 MiB`."""
    fields = 4 if with_compute_cap else 3
    gpus: list[Gpu] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", fields - 1)]  # a name may hold commas
        if len(parts) != fields or not re.match(r"\d", parts[1]):
            continue   # not a data row (a warning line, an error message)
        if with_compute_cap:
            name, driver, cc_text, mem = parts
            cc, source = parse_compute_cap(cc_text), "nvidia-smi"
            if isinstance(cc, str):
                cc, source = _cc_from_name(name, cc)
        else:
            name, driver, mem = parts
            cc, source = _cc_from_name(name, "unknown")
        gpus.append(Gpu(name, driver, cc, _int_prefix(mem), source))
    return gpus


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """(driver version, driver's max CUDA) from the banner of plain `nvidia-smi`:
    `| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |`.
    Drivers before 410.72 print no "CUDA Version"; inside containers the NVIDIA-SMI
    version may differ from the driver's, so "Driver Version" is the one to read."""
    driver = re.search(r"Driver Version:\s*([0-9][0-9.]*)", text)
    cuda = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", text)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def parse_nvcc_version(text: str) -> str | None:
    """`Cuda compilation tools, release 11.2, V11.2.152` -> "11.2"."""
    m = re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else None


def parse_cuda_version_json(text: str) -> str | None:
    """`/usr/local/cuda-X/version.json` ({"cuda": {"version": "11.2.2"}, ...}) -> "11.2.2"."""
    try:
        data = json.loads(text)
        version = data["cuda"]["version"]
        return str(version) if version else None
    except (ValueError, KeyError, TypeError):
        m = re.search(r'"cuda"\s*:\s*\{[^}]*?"version"\s*:\s*"([^"]+)"', text)   # a fragment
        return m.group(1) if m else None


def parse_cuda_version_txt(text: str) -> str | None:
    """`version.txt` of CUDA 10.x and older: `CUDA Version 10.2.89` -> "10.2.89"."""
    m = re.search(r"CUDA Version (\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def parse_gpu_probe(text: str) -> GpuFacts:
    """Parse the output of COMMAND.  Reports what the host says; decides nothing."""
    sections = split_sections(text)
    by_name: dict[str, list[Section]] = {}
    for s in sections:
        by_name.setdefault(s.name, []).append(s)

    def first(name: str) -> Section | None:
        return by_name.get(name, [None])[0]

    query, nocc, smi = first("query"), first("query-nocc"), first("smi")
    gpus: list[Gpu] = []
    error: str | None = None
    found = True
    if query is None:
        found, error = False, "the probe printed no gpu.query section"
    else:
        rc = int(query.attrs.get("rc", "0") or 0)
        if rc == 127 or "command not found" in query.body:
            found = False
        elif rc == 0:
            gpus = parse_query_rows(query.body)
        elif nocc is not None and int(nocc.attrs.get("rc", "1") or 1) == 0:
            gpus = parse_query_rows(nocc.body, with_compute_cap=False)
        elif nocc is not None:
            error = _first_line(nocc.body) or f"nvidia-smi exited with status {nocc.attrs.get('rc')}"
        elif rc == 124:
            error = "nvidia-smi did not answer within 20 s (wedged driver?)"
        else:
            error = _first_line(query.body) or f"nvidia-smi exited with status {rc}"
    if found and not gpus and error is None:
        error = _first_line(query.body) if query else None
        error = error or "nvidia-smi lists no GPU"

    driver, driver_cuda = parse_smi_header(smi.body) if smi else (None, None)
    if gpus and not driver:
        driver = gpus[0].driver_version

    toolkits: set[str] = set()
    for s in by_name.get("toolkit-json", []):
        v = parse_cuda_version_json(s.body)
        if v:
            toolkits.add(_major_minor(v))
    for s in by_name.get("toolkit-txt", []):
        v = parse_cuda_version_txt(s.body)
        if v:
            toolkits.add(_major_minor(v))
    for s in by_name.get("nvcc", []):
        v = parse_nvcc_version(s.body)
        if v:
            toolkits.add(v)

    lib = first("libcuda")
    pci = first("pci")
    pci_gpus = None
    if pci is not None and pci.attrs.get("state") != "unavailable":
        pci_gpus = sum(1 for ln in pci.body.splitlines() if ln.strip())

    return GpuFacts(
        gpus=gpus,
        driver_cuda=driver_cuda,
        toolkits=sorted(toolkits, key=_version_key),
        libcuda=bool(lib and lib.body.strip() == "yes"),
        error=error,
        driver_version=driver,
        smi=found,
        pci_gpus=pci_gpus,
    )


GPU_FACT = Fact("gpu", COMMAND, parse_gpu_probe)


# --------------------------------------------------------------------------------------
# Compute capability by model name: only for drivers older than R510, which cannot report
# compute_cap.  Keyed by the model token of the name ("Tesla V100-SXM2-16GB" -> "V100").
# --------------------------------------------------------------------------------------
KNOWN_COMPUTE_CAPS: dict[str, CC] = {
    "K80": (3, 7), "K40": (3, 5), "K40C": (3, 5), "K40M": (3, 5), "K20": (3, 5),
    "M60": (5, 2), "M40": (5, 2), "M4": (5, 2), "P100": (6, 0), "P40": (6, 1), "P4": (6, 1),
    "V100": (7, 0), "V100S": (7, 0), "T4": (7, 5),
    "A100": (8, 0), "A30": (8, 0), "A800": (8, 0),
    "A10": (8, 6), "A10G": (8, 6), "A40": (8, 6), "A16": (8, 6), "A2": (8, 6),
    "L4": (8, 9), "L40": (8, 9), "L40S": (8, 9), "L20": (8, 9),
    "H100": (9, 0), "H800": (9, 0), "H200": (9, 0), "GH200": (9, 0),
}


def _cc_from_name(name: str, raw: str) -> tuple[CC | str, str]:
    words = name.replace("NVIDIA", " ").replace("Tesla", " ").split()
    token = re.split(r"[-\s]", words[0])[0].upper() if words else ""
    if token in KNOWN_COMPUTE_CAPS:
        return KNOWN_COMPUTE_CAPS[token], "name"
    return raw, "unknown"


# --------------------------------------------------------------------------------------
# MXNet 1.9.1 wheels
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MxnetWheel:
    package: str
    cuda: str
    # Minimum Linux driver: the GA driver of that CUDA toolkit (NVIDIA's "CUDA Toolkit and
    # Corresponding Driver Versions" table), not the 11.x minor-version-compatibility floor
    # 450.80.02.  Minor-version compatibility does not cover PTX JIT, and MXNet compiles its
    # fused operators at run time with the wheel's NVRTC into PTX of that CUDA release,
    # which an older driver cannot load.  For the same reason a wheel also needs
    # CUDA <= the driver's "CUDA Version".
    min_driver: str
    # Architectures with SASS in the wheel (MXNET_CUDA_ARCH of MXNet's
    # config/distribution/linux_cuXXX.cmake); no "+PTX", so no PTX at all.
    sass: tuple[CC, ...]

    @property
    def max_cc(self) -> CC:
        """The highest compute capability with kernels in the wheel.  It is also the
        newest architecture that wheel's NVRTC (same CUDA release) can compile for."""
        return max(self.sass)

    @property
    def spec(self) -> str:
        return f"{self.package}=={MXNET_VERSION}"

    def runs_on(self, cc: CC) -> bool:
        # A cubin for X.y runs on X.z with z >= y, never across majors; without PTX
        # there is nothing for the driver to JIT for a newer major (Hopper 9.0).
        return any(a[0] == cc[0] and a[1] <= cc[1] for a in self.sass)


_ARCH_CU10 = ((3, 0), (5, 0), (6, 0), (7, 0), (7, 5))
_ARCH_CU110 = ((5, 0), (6, 0), (7, 0), (8, 0))
_ARCH_CU11X = ((5, 0), (6, 0), (7, 0), (8, 0), (8, 6))

# Oldest first.  Drivers are the Linux x86_64 GA drivers; 11.0 uses 450.51.05 (11.0.2 GA)
# rather than 450.36.06, which was the 11.0.1 RC driver.
MXNET_WHEELS: dict[str, MxnetWheel] = {w.package: w for w in (
    MxnetWheel("mxnet-cu101", "10.1", "418.39", _ARCH_CU10),
    MxnetWheel("mxnet-cu102", "10.2", "440.33", _ARCH_CU10),
    MxnetWheel("mxnet-cu110", "11.0", "450.51.05", _ARCH_CU110),
    MxnetWheel("mxnet-cu112", "11.2", "460.27.03", _ARCH_CU11X),
    MxnetWheel("mxnet-cu113", "11.3", "465.19.01", _ARCH_CU11X),
    MxnetWheel("mxnet-cu114", "11.4", "470.42.01", _ARCH_CU11X),
    MxnetWheel("mxnet-cu115", "11.5", "495.29.05", _ARCH_CU11X),
    MxnetWheel("mxnet-cu116", "11.6", "510.39.01", _ARCH_CU11X),
    MxnetWheel("mxnet-cu117", "11.7", "515.43.04", _ARCH_CU11X),
)}
ALL_PACKAGES = (CPU_PACKAGE, *MXNET_WHEELS)
HIGHEST_CC: CC = max(w.max_cc for w in MXNET_WHEELS.values())
LOWEST_CC: CC = min(min(w.sass) for w in MXNET_WHEELS.values())

# First driver that reports each CUDA version (NVIDIA's table): used only when the banner
# has no "CUDA Version" (drivers before 410.72).
DRIVER_CUDA: tuple[tuple[str, str], ...] = (
    ("384.81", "9.0"), ("390.46", "9.1"), ("396.26", "9.2"), ("410.48", "10.0"),
    ("418.39", "10.1"), ("440.33", "10.2"), ("450.36.06", "11.0"), ("455.23", "11.1"),
    ("460.27.03", "11.2"), ("465.19.01", "11.3"), ("470.42.01", "11.4"),
    ("495.29.05", "11.5"), ("510.39.01", "11.6"), ("515.43.04", "11.7"),
)


def _version_key(v: str) -> tuple[int, ...]:
    """Numeric dotted versions ("535.104.05", "11.2") as comparable tuples; trailing zeros
    are dropped so "11.0" == "11.0.0".  Unparsable text sorts first."""
    parts = [int(p) for p in re.findall(r"\d+", v.split("-")[0])] if re.match(r"\d", v) else []
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def driver_max_cuda(driver: str) -> str | None:
    """The CUDA version a driver supports, from NVIDIA's table (None if older than 9.0)."""
    best = None
    for min_driver, cuda in DRIVER_CUDA:
        if _version_key(driver) >= _version_key(min_driver):
            best = cuda
    return best


def normalize_wheel(cuda: str) -> str:
    """"cu112", "mxnet-cu112", "11.2" -> "mxnet-cu112"; ValueError names the valid ones."""
    c = cuda.strip().lower()
    if re.fullmatch(r"\d+\.\d+", c):
        c = "cu" + c.replace(".", "")
    if not c.startswith("mxnet-"):
        c = "mxnet-" + c
    if c not in MXNET_WHEELS:
        valid = ", ".join(p.removeprefix("mxnet-") for p in MXNET_WHEELS)
        raise ValueError(f"unknown MXNet {MXNET_VERSION} CUDA wheel {cuda!r}; expected one of {valid}")
    return c


# --------------------------------------------------------------------------------------
# The choice
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MxnetChoice:
    package: str
    version: str = MXNET_VERSION
    gpu: bool = False
    expected_gpus: int = 0
    ok: bool = True
    reason: str = ""
    advice: str = ""
    # Environment the kernels need (MXNET_USE_FUSION=0 when the GPU is newer than NVRTC).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


FALLBACK_HINT = "or set mxnet_allow_cpu_fallback: true to install the CPU build (mxnet) instead"


def _fmt_cc(cc: CC | str) -> str:
    return f"{cc[0]}.{cc[1]}" if isinstance(cc, tuple) else str(cc)


def _gpu_summary(gpus: list[Gpu]) -> str:
    names: dict[str, int] = {}
    for g in gpus:
        names[g.name] = names.get(g.name, 0) + 1
    return ", ".join(f"{n} x {name}" for name, n in names.items())


def _driver_fits(w: MxnetWheel, driver: str | None, driver_cuda: str | None) -> bool:
    if driver is None:
        return False
    if driver_cuda is not None and _version_key(w.cuda) > _version_key(driver_cuda):
        return False
    return _version_key(driver) >= _version_key(w.min_driver)


def _wheel_runs_on_all(w: MxnetWheel, gpus: list[Gpu]) -> bool:
    return all(isinstance(g.compute_cap, tuple) and w.runs_on(g.compute_cap) for g in gpus)


def _cc_refusal(gpus: list[Gpu]) -> tuple[str, str] | None:
    """Reason + advice when no wheel at all has kernels for some GPU of the host."""
    for g in gpus:
        cc = g.compute_cap
        if not isinstance(cc, tuple):
            return (
                f"the compute capability of the {g.name} is unknown (driver {g.driver_version} "
                "cannot report it and the model is not in the table), so no MXNet "
                f"{MXNET_VERSION} GPU wheel can be shown to run on it",
                "Upgrade the NVIDIA driver (R510 or newer reports compute_cap), " + FALLBACK_HINT,
            )
        if any(w.runs_on(cc) for w in MXNET_WHEELS.values()):
            continue
        if cc > HIGHEST_CC:
            return (
                f"compute capability {_fmt_cc(cc)} ({g.name}) is above {_fmt_cc(HIGHEST_CC)}, "
                f"the highest MXNet {MXNET_VERSION} GPU wheels carry, and they have no PTX",
                "Use a framework that supports this GPU (MXNet is retired; e.g. a current "
                "PyTorch or JAX image), run the course on an older GPU type (T4, A10G, V100, "
                "A100), " + FALLBACK_HINT,
            )
        return (
            f"compute capability {_fmt_cc(cc)} ({g.name}) is below {_fmt_cc(LOWEST_CC)}, "
            f"the lowest MXNet {MXNET_VERSION} GPU wheels carry",
            "Run the course on a newer GPU type, " + FALLBACK_HINT,
        )
    return None


def _driver_refusal(gpus: list[Gpu], driver: str | None, driver_cuda: str | None,
                    candidates: list[MxnetWheel]) -> tuple[str, str]:
    """Reason + advice when wheels with kernels for the GPUs exist but the driver is too old."""
    oldest = candidates[0]
    ccs = sorted({_fmt_cc(g.compute_cap) for g in gpus})
    has = "" if oldest is next(iter(MXNET_WHEELS.values())) else \
        f" with kernels for compute capability {', '.join(ccs)}"
    if driver is None:
        said = "the NVIDIA driver version is unknown"
    elif driver_cuda:
        said = f"driver {driver} supports CUDA up to {driver_cuda}"
    else:
        said = f"driver {driver} is older than every driver in NVIDIA's CUDA table"
    reason = (f"{said}; the oldest MXNet {MXNET_VERSION} GPU wheel{has} needs CUDA "
              f"{oldest.cuda} (driver >= {oldest.min_driver})")
    newest = candidates[-1]
    advice = (f"Upgrade the NVIDIA driver to >= {oldest.min_driver} (>= {newest.min_driver} "
              f"for {newest.package}), " + FALLBACK_HINT)
    return reason, advice


def _refuse_or_fallback(reason: str, advice: str, allow_cpu_fallback: bool) -> MxnetChoice:
    if allow_cpu_fallback:
        return MxnetChoice(CPU_PACKAGE, ok=True,
                           reason=f"fell back to the CPU build mxnet because {reason}")
    return MxnetChoice(CPU_PACKAGE, ok=False, reason=reason, advice=advice)


def _fusion_env(w: MxnetWheel, gpus: list[Gpu]) -> tuple[dict[str, str], str]:
    """A GPU newer than the wheel's newest arch (but same major, e.g. Ada 8.9 on 8.6 kernels)
    runs the SASS, but MXNet's runtime fusion (src/operator/fusion/fused_op.cu) asks NVRTC
    for compute_<the device's arch>, which NVRTC <= 11.7 rejects for 8.9 ("NVRTC Compilation
    failed. Please set environment variable MXNET_USE_FUSION to 0").  Derived from the
    source and NVIDIA's compatibility rules, not yet run on Ada hardware."""
    newer = sorted({g.compute_cap for g in gpus
                    if isinstance(g.compute_cap, tuple) and g.compute_cap > w.max_cc})
    if not newer:
        return {}, ""
    ccs = ", ".join(_fmt_cc(c) for c in newer)
    note = (f" through its {_fmt_cc(w.max_cc)} kernels (same-major binary compatibility); "
            f"its NVRTC does not know compute capability {ccs}, so MXNet's runtime operator "
            f"fusion is turned off (MXNET_USE_FUSION=0)")
    return {"MXNET_USE_FUSION": "0"}, note


def choose_mxnet_build(
    facts: GpuFacts,
    *,
    prefer: Literal["auto", "cpu", "gpu"] = "auto",
    cuda: str | None = None,
    allow_cpu_fallback: bool = False,
) -> MxnetChoice:
    """Pick the MXNet 1.9.1 wheel for a host, or refuse (ok=False) with reason and advice.

    prefer="cpu" always gives the CPU build.  Otherwise a host with GPUs gets the newest
    cuXXX wheel whose CUDA the driver supports and that has kernels for every GPU;
    `cuda` pins one wheel ("cu112"), which is refused when it cannot run.  A refusal turns
    into the CPU build (ok=True) only with allow_cpu_fallback.
    """
    if prefer not in ("auto", "cpu", "gpu"):
        raise ValueError(f"prefer must be auto, cpu or gpu, not {prefer!r}")
    pinned = MXNET_WHEELS[normalize_wheel(cuda)] if cuda else None

    if prefer == "cpu":
        have = f" although the host has {_gpu_summary(facts.gpus)}" if facts.gpus else ""
        return MxnetChoice(CPU_PACKAGE, reason=f"the course prefers the CPU build (prefer=cpu), "
                                               f"so mxnet is used{have}")

    wants_gpu = prefer == "gpu" or pinned is not None
    what = pinned.package if pinned else "a GPU build"
    if facts.error is not None:
        return _refuse_or_fallback(
            f"nvidia-smi is installed but failed ({facts.error})",
            "Fix the NVIDIA driver first (load the kernel module, or reboot after a driver "
            "upgrade; check `dmesg | grep -i nvrm`), " + FALLBACK_HINT, allow_cpu_fallback)
    if not facts.gpus:
        if facts.pci_gpus:
            return _refuse_or_fallback(
                f"{facts.pci_gpus} NVIDIA GPU(s) are on the PCI bus but no NVIDIA driver is "
                "installed (nvidia-smi not found)",
                "Install the NVIDIA driver, " + FALLBACK_HINT, allow_cpu_fallback)
        if wants_gpu:
            return _refuse_or_fallback(
                f"the course asks for {what} but the host has no NVIDIA GPU",
                "Run the course on a GPU instance type, " + FALLBACK_HINT, allow_cpu_fallback)
        return MxnetChoice(CPU_PACKAGE, reason="no NVIDIA GPU found (no nvidia-smi and no NVIDIA "
                                               "display device on the PCI bus), so the CPU build "
                                               "mxnet is used")

    gpus = facts.gpus
    driver = facts.driver_version or gpus[0].driver_version
    driver_cuda = facts.driver_cuda or driver_max_cuda(driver)
    cuda_note = f"CUDA {driver_cuda}" if driver_cuda else "CUDA unknown"
    cc_names = ", ".join(sorted({f"{_fmt_cc(g.compute_cap)} ({g.name})" for g in gpus}))

    cc_problem = _cc_refusal(gpus)
    if cc_problem:
        return _refuse_or_fallback(*cc_problem, allow_cpu_fallback)

    runnable = [w for w in MXNET_WHEELS.values() if _wheel_runs_on_all(w, gpus)]
    if not runnable:   # each GPU has a wheel, but no one wheel has kernels for all of them
        per_gpu = []
        for name, cc in dict.fromkeys((g.name, g.compute_cap) for g in gpus):
            ok = [w.package.removeprefix("mxnet-") for w in MXNET_WHEELS.values()
                  if isinstance(cc, tuple) and w.runs_on(cc)]   # it is: _cc_refusal turned away the rest
            per_gpu.append(f"{name} ({_fmt_cc(cc)}) runs only {ok[0]}..{ok[-1]}")
        return _refuse_or_fallback(
            f"no MXNet {MXNET_VERSION} GPU wheel has kernels for every GPU of this host: "
            + "; ".join(per_gpu),
            "Give the course hosts with one GPU generation, " + FALLBACK_HINT, allow_cpu_fallback)
    fitting = [w for w in runnable if _driver_fits(w, driver, driver_cuda)]
    alt = f" (auto picks {fitting[-1].package} here)" if fitting else ""
    if pinned is not None:
        if pinned not in runnable:
            return _refuse_or_fallback(
                f"the pinned {pinned.package} has no kernels for compute capability {cc_names}; "
                f"it carries {', '.join(_fmt_cc(a) for a in pinned.sass)} without PTX",
                f"Unpin the CUDA wheel{alt}, " + FALLBACK_HINT, allow_cpu_fallback)
        if pinned not in fitting:
            return _refuse_or_fallback(
                f"the pinned {pinned.package} needs CUDA {pinned.cuda} (driver >= "
                f"{pinned.min_driver}); driver {driver} supports CUDA up to "
                f"{driver_cuda or 'an unknown version'}",
                f"Unpin the CUDA wheel{alt}, pin an older one, upgrade the NVIDIA driver to >= "
                f"{pinned.min_driver}, " + FALLBACK_HINT, allow_cpu_fallback)
        chosen, why = pinned, "the course pins it"
    else:
        if not fitting:
            return _refuse_or_fallback(*_driver_refusal(gpus, driver, driver_cuda, runnable),
                                       allow_cpu_fallback)
        chosen, why = fitting[-1], f"it is the newest MXNet {MXNET_VERSION} wheel that fits"

    env, fusion_note = _fusion_env(chosen, gpus)
    reason = (f"{chosen.package} (CUDA {chosen.cuda}) runs on {_gpu_summary(gpus)} with compute "
              f"capability {', '.join(sorted({_fmt_cc(g.compute_cap) for g in gpus}))} and driver "
              f"{driver} ({cuda_note}){fusion_note}; {why}")
    return MxnetChoice(chosen.package, gpu=True, expected_gpus=len(gpus), ok=True,
                       reason=reason, env=env)


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------
def _gib(mib: int) -> str:
    return f"{mib / 1024:.1f}"


def readiness_report(facts: GpuFacts, choice: MxnetChoice) -> str:
    """Plain-text lines saying what the host has and whether the course's MXNet can run."""
    lines: list[str] = []
    if facts.gpus:
        for name in dict.fromkeys(g.name for g in facts.gpus):
            same = [g for g in facts.gpus if g.name == name]
            g = same[0]
            src = {"nvidia-smi": "", "name": " (from the model name: this driver cannot report it)",
                   }.get(g.cc_source, f" ({g.cc_source})")
            lines.append(f"GPU: {len(same)} x {name}, {_gib(g.memory_mib)} GiB, "
                         f"compute capability {_fmt_cc(g.compute_cap)}{src}")
    elif facts.error:
        lines.append(f"GPU: nvidia-smi failed: {facts.error}")
    elif facts.pci_gpus:
        lines.append(f"GPU: {facts.pci_gpus} NVIDIA device(s) on the PCI bus, no driver")
    else:
        lines.append("GPU: none (no nvidia-smi)")
    if facts.driver_version:
        cuda = facts.driver_cuda or driver_max_cuda(facts.driver_version)
        lines.append(f"Driver: {facts.driver_version}, supports CUDA up to {cuda or 'unknown'}"
                     + ("" if facts.driver_cuda else " (from NVIDIA's table)"))
    lines.append(f"CUDA toolkit: {', '.join(facts.toolkits) or 'none'}"
                 " (MXNet wheels bundle their own CUDA libraries)")
    lines.append(f"libcuda.so.1: {'yes' if facts.libcuda else 'no'}")
    if not choice.ok:
        lines.append(f"MXNet {choice.version}: REFUSED (install nothing)")
    elif choice.gpu:
        lines.append(f"MXNet {choice.version}: OK: {choice.spec} on {choice.expected_gpus} GPU(s)")
    else:
        lines.append(f"MXNet {choice.version}: OK: {choice.spec} (CPU)")
    lines.append(f"Why: {choice.reason}")
    for key, value in choice.env.items():
        lines.append(f"Env: {key}={value}")
    if choice.advice:
        lines.append(f"Advice: {choice.advice}")
    return "\n".join(lines)


GPU_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("host", "Host"), ("gpu", "GPU"), ("count", "Count"), ("memory_gib", "Memory (GiB)"),
    ("driver", "Driver"), ("driver_cuda", "Driver CUDA"), ("toolkit", "Toolkit"),
    ("compute_cap", "Compute cap."), ("build", "Framework build"), ("can_run", "Can run"),
    ("reason", "Reason"),
)


def gpu_table_rows(results: dict[str, tuple[GpuFacts, MxnetChoice]]) -> list[dict[str, str]]:
    """One row per host for `invoke gpus`; keys are GPU_TABLE_COLUMNS, values are strings."""
    rows = []
    for host, (facts, choice) in results.items():
        models = list(dict.fromkeys(g.name for g in facts.gpus))
        if facts.gpus:
            gpu = ", ".join(models)
        elif facts.error:
            gpu = "driver error"
        elif facts.pci_gpus:
            gpu = "no driver"
        else:
            gpu = "-"
        rows.append({
            "host": host,
            "gpu": gpu,
            "count": str(len(facts.gpus)),
            "memory_gib": ", ".join(dict.fromkeys(_gib(g.memory_mib) for g in facts.gpus)) or "-",
            "driver": facts.driver_version or "-",
            "driver_cuda": facts.driver_cuda or "-",
            "toolkit": ", ".join(facts.toolkits) or "-",
            "compute_cap": ", ".join(dict.fromkeys(_fmt_cc(g.compute_cap) for g in facts.gpus)) or "-",
            "build": choice.spec,
            "can_run": "yes" if choice.ok else "no",
            "reason": choice.reason,
        })
    return rows
