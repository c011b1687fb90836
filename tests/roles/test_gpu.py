"""GPU facts and the MXNet 1.9.1 build choice, as data.

Each recording under tests/data/gpu/ is the whole output of roles.mxnet.gpu.COMMAND on one kind of
host (h200.txt was recorded on a real H200 with `scripts/gpu-check --save-probe`).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.engine.facts import Fact
from roles.mxnet.gpu import (
    COMMAND, GPU_FACT, HIGHEST_CC, MXNET_WHEELS, Gpu, GpuFacts, choose_mxnet_build, driver_max_cuda, gpu_table_rows, normalize_wheel,
    parse_compute_cap, parse_cuda_version_json, parse_cuda_version_txt, parse_gpu_probe,
    parse_nvcc_version, parse_query_rows, parse_smi_header, readiness_report, split_sections,
)
from tests.skips import requires

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "gpu"
SCRIPT = ROOT / "scripts" / "gpu-check"


def load(name: str) -> GpuFacts:
    return parse_gpu_probe((DATA / name).read_text())


# --------------------------------------------------------------------------------------
# Recordings -> facts
# --------------------------------------------------------------------------------------
@dataclass
class FactsCase:
    file: str
    gpus: list[tuple[str, tuple[int, int] | str, int]]   # (name, compute cap, memory MiB)
    driver: str | None
    driver_cuda: str | None
    toolkits: list[str] = field(default_factory=list)
    libcuda: bool = True
    error: str | None = None          # substring of GpuFacts.error
    smi: bool = True
    pci_gpus: int = 1
    cc_source: str = "nvidia-smi"


FACTS = [
    FactsCase("no-driver.txt", [], None, None, libcuda=False, smi=False, pci_gpus=0),
    FactsCase("gpu-no-driver.txt", [], None, None, libcuda=False, smi=False, pci_gpus=1),
    FactsCase("driver-failing.txt", [], None, None,
              error="couldn't communicate with the NVIDIA driver"),
    FactsCase("t4.txt", [("Tesla T4", (7, 5), 15360)], "535.104.05", "12.2"),
    FactsCase("a10g.txt", [("NVIDIA A10G", (8, 6), 22731)], "470.182.03", "11.4",
              cc_source="name"),
    FactsCase("h100.txt", [("NVIDIA H100 80GB HBM3", (9, 0), 81559)], "535.129.03", "12.2"),
    FactsCase("h200.txt", [("NVIDIA H200", (9, 0), 143771)], "580.159.04", "13.0",
              toolkits=["13.0"]),
    FactsCase("l4.txt", [("NVIDIA L4", (8, 9), 23034)], "535.104.05", "12.2"),
    FactsCase("2x-v100.txt", [("Tesla V100-SXM2-16GB", (7, 0), 16160)] * 2, "450.80.02", "11.0",
              pci_gpus=2, cc_source="name"),
    FactsCase("k80-old-driver.txt", [("Tesla K80", (3, 7), 11441)], "410.48", None,
              toolkits=["10.0"], cc_source="name"),
    FactsCase("a100-toolkits.txt", [("A100-SXM4-40GB", (8, 0), 40536)], "460.106.00", "11.2",
              toolkits=["10.2", "11.2"], cc_source="name"),
]


@pytest.mark.parametrize("case", FACTS, ids=lambda c: c.file)
def test_recording_parses_to_facts(case: FactsCase) -> None:
    facts = load(case.file)
    assert [(g.name, g.compute_cap, g.memory_mib) for g in facts.gpus] == case.gpus
    assert all(g.cc_source == case.cc_source for g in facts.gpus)
    assert all(g.driver_version == case.driver for g in facts.gpus)
    assert facts.driver_version == case.driver
    assert facts.driver_cuda == case.driver_cuda
    assert facts.toolkits == case.toolkits
    assert facts.libcuda is case.libcuda
    assert facts.smi is case.smi
    assert facts.pci_gpus == case.pci_gpus
    if case.error:
        assert facts.error is not None and case.error in facts.error
    else:
        assert facts.error is None


def test_every_recording_has_a_case() -> None:
    assert sorted(p.name for p in DATA.glob("*.txt")) == sorted(c.file for c in FACTS)


def test_gpu_fact_is_a_fact() -> None:
    assert isinstance(GPU_FACT, Fact)
    assert GPU_FACT.key == "gpu" and GPU_FACT.command == COMMAND
    assert GPU_FACT.parse is parse_gpu_probe


# --------------------------------------------------------------------------------------
# Recordings -> choice
# --------------------------------------------------------------------------------------
@dataclass
class ChoiceCase:
    id: str
    file: str
    package: str
    ok: bool
    expected_gpus: int = 0
    kwargs: dict = field(default_factory=dict)
    reason: tuple[str, ...] = ()      # substrings of the reason
    advice: tuple[str, ...] = ()      # substrings of the advice ("" when ok)
    env: dict = field(default_factory=dict)


CHOICES = [
    ChoiceCase("cpu-host", "no-driver.txt", "mxnet", True,
               reason=("no NVIDIA GPU found", "CPU build mxnet")),
    ChoiceCase("cpu-host-wants-gpu", "no-driver.txt", "mxnet", False, kwargs={"prefer": "gpu"},
               reason=("asks for a GPU build", "no NVIDIA GPU"),
               advice=("mxnet_allow_cpu_fallback",)),
    ChoiceCase("cpu-host-pinned", "no-driver.txt", "mxnet", False, kwargs={"cuda": "cu112"},
               reason=("asks for mxnet-cu112", "no NVIDIA GPU")),
    ChoiceCase("gpu-without-driver", "gpu-no-driver.txt", "mxnet", False,
               reason=("1 NVIDIA GPU(s) are on the PCI bus", "no NVIDIA driver"),
               advice=("Install the NVIDIA driver", "mxnet_allow_cpu_fallback")),
    ChoiceCase("driver-failing", "driver-failing.txt", "mxnet", False,
               reason=("nvidia-smi is installed but failed", "couldn't communicate"),
               advice=("reboot after a driver upgrade", "mxnet_allow_cpu_fallback")),
    ChoiceCase("driver-failing-fallback", "driver-failing.txt", "mxnet", True,
               kwargs={"allow_cpu_fallback": True},
               reason=("fell back to the CPU build", "couldn't communicate")),
    ChoiceCase("t4", "t4.txt", "mxnet-cu117", True, 1,
               reason=("mxnet-cu117 (CUDA 11.7)", "1 x Tesla T4", "compute capability 7.5",
                       "driver 535.104.05 (CUDA 12.2)", "newest")),
    ChoiceCase("t4-prefer-cpu", "t4.txt", "mxnet", True, kwargs={"prefer": "cpu"},
               reason=("prefer=cpu", "1 x Tesla T4")),
    ChoiceCase("t4-pinned-cu102", "t4.txt", "mxnet-cu102", True, 1, kwargs={"cuda": "cu102"},
               reason=("mxnet-cu102 (CUDA 10.2)", "the course pins it")),
    ChoiceCase("a10g", "a10g.txt", "mxnet-cu114", True, 1,
               reason=("mxnet-cu114 (CUDA 11.4)", "compute capability 8.6",
                       "driver 470.182.03 (CUDA 11.4)")),
    ChoiceCase("a10g-pinned-too-new", "a10g.txt", "mxnet", False, kwargs={"cuda": "cu117"},
               reason=("pinned mxnet-cu117 needs CUDA 11.7 (driver >= 515.43.04)",
                       "driver 470.182.03 supports CUDA up to 11.4"),
               advice=("auto picks mxnet-cu114 here", "515.43.04", "mxnet_allow_cpu_fallback")),
    ChoiceCase("a10g-pinned-no-kernels", "a10g.txt", "mxnet", False, kwargs={"cuda": "cu102"},
               reason=("pinned mxnet-cu102 has no kernels for compute capability 8.6",
                       "3.0, 5.0, 6.0, 7.0, 7.5 without PTX"),
               advice=("auto picks mxnet-cu114 here",)),
    ChoiceCase("h100", "h100.txt", "mxnet", False,
               reason=("compute capability 9.0 (NVIDIA H100 80GB HBM3) is above 8.6",
                       "no PTX"),
               advice=("PyTorch", "mxnet_allow_cpu_fallback")),
    ChoiceCase("h200", "h200.txt", "mxnet", False,
               reason=("compute capability 9.0 (NVIDIA H200) is above 8.6, the highest MXNet "
                       "1.9.1 GPU wheels carry, and they have no PTX",),
               advice=("mxnet_allow_cpu_fallback",)),
    ChoiceCase("h200-fallback", "h200.txt", "mxnet", True, kwargs={"allow_cpu_fallback": True},
               reason=("fell back to the CPU build mxnet because compute capability 9.0 "
                       "(NVIDIA H200) is above 8.6",)),
    ChoiceCase("h200-pinned", "h200.txt", "mxnet", False, kwargs={"cuda": "cu117"},
               reason=("compute capability 9.0 (NVIDIA H200) is above 8.6",)),
    ChoiceCase("l4-ada", "l4.txt", "mxnet-cu117", True, 1,
               reason=("1 x NVIDIA L4", "through its 8.6 kernels", "MXNET_USE_FUSION=0"),
               env={"MXNET_USE_FUSION": "0"}),
    ChoiceCase("2x-v100", "2x-v100.txt", "mxnet-cu110", True, 2,
               reason=("mxnet-cu110 (CUDA 11.0)", "2 x Tesla V100-SXM2-16GB",
                       "compute capability 7.0", "driver 450.80.02 (CUDA 11.0)")),
    ChoiceCase("2x-v100-pinned-cu112", "2x-v100.txt", "mxnet", False, kwargs={"cuda": "cu112"},
               reason=("pinned mxnet-cu112 needs CUDA 11.2 (driver >= 460.27.03)",
                       "driver 450.80.02 supports CUDA up to 11.0"),
               advice=("auto picks mxnet-cu110 here",)),
    ChoiceCase("2x-v100-prefer-cpu", "2x-v100.txt", "mxnet", True, kwargs={"prefer": "cpu"},
               reason=("prefer=cpu", "2 x Tesla V100-SXM2-16GB")),
    ChoiceCase("k80-old-driver", "k80-old-driver.txt", "mxnet", False,
               reason=("driver 410.48 supports CUDA up to 10.0; the oldest MXNet 1.9.1 GPU wheel "
                       "needs CUDA 10.1 (driver >= 418.39)",),
               advice=("Upgrade the NVIDIA driver to >= 418.39", "mxnet_allow_cpu_fallback")),
    ChoiceCase("k80-old-driver-fallback", "k80-old-driver.txt", "mxnet", True,
               kwargs={"allow_cpu_fallback": True},
               reason=("fell back", "driver 410.48 supports CUDA up to 10.0")),
    ChoiceCase("a100-toolkits", "a100-toolkits.txt", "mxnet-cu112", True, 1,
               reason=("mxnet-cu112 (CUDA 11.2)", "compute capability 8.0",
                       "driver 460.106.00 (CUDA 11.2)")),
    ChoiceCase("a100-pinned-by-version", "a100-toolkits.txt", "mxnet-cu110", True, 1,
               kwargs={"cuda": "11.0"}, reason=("mxnet-cu110", "the course pins it")),
]


@pytest.mark.parametrize("case", CHOICES, ids=lambda c: c.id)
def test_choice_for_recording(case: ChoiceCase) -> None:
    choice = choose_mxnet_build(load(case.file), **case.kwargs)
    assert (choice.package, choice.ok, choice.expected_gpus) == \
        (case.package, case.ok, case.expected_gpus)
    assert choice.version == "1.9.1"
    assert choice.gpu is (case.package != "mxnet")
    assert choice.spec == f"{case.package}==1.9.1"
    for part in case.reason:
        assert part in choice.reason
    if case.ok:
        assert choice.advice == ""
    else:
        assert choice.advice
        for part in case.advice:
            assert part in choice.advice
    assert choice.env == case.env


# --------------------------------------------------------------------------------------
# Rules that no recording covers
# --------------------------------------------------------------------------------------
def gpu(name: str, cc: tuple[int, int] | str, driver: str = "535.104.05", mib: int = 16384) -> Gpu:
    return Gpu(name, driver, cc, mib)


def host(*gpus: Gpu, cuda: str | None = "12.2") -> GpuFacts:
    return GpuFacts(gpus=list(gpus), driver_cuda=cuda, libcuda=True,
                    driver_version=gpus[0].driver_version, smi=True, pci_gpus=len(gpus))


def test_mixed_gpus_must_all_be_supported() -> None:
    choice = choose_mxnet_build(host(gpu("Tesla T4", (7, 5)), gpu("NVIDIA H100 PCIe", (9, 0))))
    assert not choice.ok and choice.package == "mxnet"
    assert "compute capability 9.0 (NVIDIA H100 PCIe) is above 8.6" in choice.reason


def test_mixed_gpus_use_the_wheel_every_gpu_can_run() -> None:
    # An A100 needs cu110+; a K80 (3.7) only runs the CUDA 10.x wheels: nothing fits both.
    choice = choose_mxnet_build(host(gpu("Tesla K80", (3, 7), "470.82.01"),
                                     gpu("A100-PCIE-40GB", (8, 0), "470.82.01"), cuda="11.4"))
    assert (choice.ok, choice.package) == (False, "mxnet")
    assert choice.reason == ("no MXNet 1.9.1 GPU wheel has kernels for every GPU of this host: "
                             "Tesla K80 (3.7) runs only cu101..cu102; "
                             "A100-PCIE-40GB (8.0) runs only cu110..cu117")
    assert "one GPU generation" in choice.advice
    # T4 + V100: both run the cu11x wheels' 7.0 kernels.
    ok = choose_mxnet_build(host(gpu("Tesla T4", (7, 5)), gpu("Tesla V100-PCIE-16GB", (7, 0))))
    assert (ok.package, ok.expected_gpus, ok.ok) == ("mxnet-cu117", 2, True)
    assert "1 x Tesla T4, 1 x Tesla V100-PCIE-16GB" in ok.reason


def test_driver_cuda_caps_the_wheel_even_when_the_driver_number_is_new_enough() -> None:
    # The banner's CUDA Version is authoritative: 11.3 there means no cu114+.
    choice = choose_mxnet_build(host(gpu("Tesla T4", (7, 5), "470.42.01"), cuda="11.3"))
    assert choice.package == "mxnet-cu113"


def test_ga_driver_is_the_floor_not_the_rc_driver() -> None:
    # 450.36.06 (the CUDA 11.0 RC driver) reports CUDA 11.0, but cu110 needs the GA 450.51.05.
    choice = choose_mxnet_build(host(gpu("A100-SXM4-40GB", (8, 0), "450.36.06"), cuda="11.0"))
    assert not choice.ok
    assert ("driver 450.36.06 supports CUDA up to 11.0; the oldest MXNet 1.9.1 GPU wheel with "
            "kernels for compute capability 8.0 needs CUDA 11.0 (driver >= 450.51.05)"
            in choice.reason)


def test_unknown_compute_capability_is_refused() -> None:
    choice = choose_mxnet_build(host(Gpu("Quadro Mystery", "470.82.01", "unknown", 8192,
                                         "unknown"), cuda="11.4"))
    assert not choice.ok
    assert "compute capability of the Quadro Mystery is unknown" in choice.reason
    assert "R510" in choice.advice


def test_compute_capability_below_every_wheel() -> None:
    choice = choose_mxnet_build(host(gpu("Tesla C2050", (2, 0), "390.48"), cuda="9.1"))
    assert not choice.ok and "compute capability 2.0 (Tesla C2050) is below 3.0" in choice.reason


def test_prefer_gpu_on_a_gpu_host_is_the_same_as_auto() -> None:
    facts = load("t4.txt")
    assert choose_mxnet_build(facts, prefer="gpu") == choose_mxnet_build(facts)


def test_bad_arguments_fail_early() -> None:
    with pytest.raises(ValueError, match="expected one of cu101, cu102, cu110, cu112"):
        choose_mxnet_build(load("t4.txt"), cuda="cu118")
    with pytest.raises(ValueError, match="prefer"):
        choose_mxnet_build(load("t4.txt"), prefer="fast")  # type: ignore[arg-type]
    assert normalize_wheel("cu112") == normalize_wheel("mxnet-cu112") == \
        normalize_wheel("11.2") == "mxnet-cu112"


# Which GPU test data was recorded on a machine; the rest was written from vendor documentation.
# Each file's first line says which, and README ("Kernels, GPUs and what cannot be shown here") lists them.
RECORDED_ON_A_MACHINE = {"h200.txt"}


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir()))
def test_gpu_data_says_where_it_came_from(name: str) -> None:
    first = (DATA / name).read_text().splitlines()[0]
    if name in RECORDED_ON_A_MACHINE:
        assert first.startswith("# Provenance: recorded on a machine"), first
    else:
        assert first.startswith("# Provenance: written by hand from vendor documentation, NOT recorded"), first


def test_readme_names_the_recorded_gpu_data() -> None:
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "Recorded on a machine:" in x)
    assert {n for n in (p.name for p in DATA.iterdir()) if f"`{n}`" in line} == RECORDED_ON_A_MACHINE, line


# MXNet 1.9.1's CUDA wheels as upstream publishes them, written from the sources below and not
# from roles/mxnet/gpu.py (looked up 2026-12-03):
# - package names: PyPI, the projects of user mxnet-bln (https://pypi.org/user/mxnet-bln/): mxnet-cu101,
#   -cu102, -cu110, -cu112 ... -cu117, each "uses CUDA-X.Y"; each has a 1.9.1 release (e.g. the pypi
#   overlay at https://gpo.zugaina.org/dev-python/mxnet-cu112 lists mxnet-cu112-1.9.1).
# - CUDA release and kernels: apache/mxnet config/distribution/linux_cuXXX.cmake, the build config of
#   those wheels: CMAKE_CUDA_COMPILER (or CUDACXX) /usr/local/cuda-X.Y/bin/nvcc and MXNET_CUDA_ARCH
#   (SASS only, no "+PTX"), e.g. linux_cu117.cmake at 71dab74c: "5.0;6.0;7.0;8.0;8.6".
# - driver: NVIDIA CUDA Toolkit Release Notes, "CUDA Toolkit and Corresponding Driver Versions",
#   the Linux x86_64 driver of each toolkit's first GA release (11.0: 11.0.2 GA, not the 11.0.1 RC).
UPSTREAM_WHEELS = [
    # (package, CUDA, minimum Linux driver, MXNET_CUDA_ARCH)
    ("mxnet-cu101", "10.1", "418.39", "3.0;5.0;6.0;7.0;7.5"),
    ("mxnet-cu102", "10.2", "440.33", "3.0;5.0;6.0;7.0;7.5"),
    ("mxnet-cu110", "11.0", "450.51.05", "5.0;6.0;7.0;8.0"),
    ("mxnet-cu112", "11.2", "460.27.03", "5.0;6.0;7.0;8.0;8.6"),
    ("mxnet-cu113", "11.3", "465.19.01", "5.0;6.0;7.0;8.0;8.6"),
    ("mxnet-cu114", "11.4", "470.42.01", "5.0;6.0;7.0;8.0;8.6"),
    ("mxnet-cu115", "11.5", "495.29.05", "5.0;6.0;7.0;8.0;8.6"),
    ("mxnet-cu116", "11.6", "510.39.01", "5.0;6.0;7.0;8.0;8.6"),
    ("mxnet-cu117", "11.7", "515.43.04", "5.0;6.0;7.0;8.0;8.6"),
]


@pytest.mark.parametrize("package,cuda,driver,arch", UPSTREAM_WHEELS, ids=[w[0] for w in UPSTREAM_WHEELS])
def test_wheel_table_matches_upstream(package: str, cuda: str, driver: str, arch: str) -> None:
    wheel = MXNET_WHEELS[package]
    sass = tuple(tuple(int(n) for n in a.split(".")) for a in arch.split(";"))
    assert (wheel.cuda, wheel.min_driver, wheel.sass) == (cuda, driver, sass)
    assert wheel.spec == f"{package}==1.9.1"
    assert driver_max_cuda(driver) == cuda       # NVIDIA's table, read the other way


def test_wheel_table_holds_the_upstream_wheels_oldest_first() -> None:
    assert list(MXNET_WHEELS) == [w[0] for w in UPSTREAM_WHEELS]
    assert HIGHEST_CC == (8, 6)                  # the newest MXNET_CUDA_ARCH of any 1.9.1 wheel
    cu117 = MXNET_WHEELS["mxnet-cu117"]          # SASS only: same major, never a newer one
    assert cu117.runs_on((8, 9)) and cu117.runs_on((7, 5)) and not cu117.runs_on((9, 0))
    assert not cu117.runs_on((3, 7)) and MXNET_WHEELS["mxnet-cu102"].runs_on((3, 7))


@pytest.mark.parametrize("driver,cuda", [("410.48", "10.0"), ("418.39", "10.1"),
                                         ("450.80.02", "11.0"), ("470.182.03", "11.4"),
                                         ("375.26", None)])
def test_driver_max_cuda(driver: str, cuda: str | None) -> None:
    assert driver_max_cuda(driver) == cuda


# --------------------------------------------------------------------------------------
# The small parsers
# --------------------------------------------------------------------------------------
def test_parse_query_rows() -> None:
    rows = parse_query_rows("Tesla T4, 535.104.05, 7.5, 15360 MiB\n"
                            "NVIDIA H200, 580.159.04, 9.0, 143771 MiB\n")
    assert rows == [Gpu("Tesla T4", "535.104.05", (7, 5), 15360),
                    Gpu("NVIDIA H200", "580.159.04", (9, 0), 143771)]
    assert parse_query_rows("No devices were found") == []
    # [N/A] compute capability: fall back to the model name.
    assert parse_query_rows("Tesla V100-SXM2-32GB, 535.1, [N/A], [N/A]")[0] == \
        Gpu("Tesla V100-SXM2-32GB", "535.1", (7, 0), 0, "name")
    assert parse_query_rows("GRID T4-8Q, 470.82, 8192 MiB", with_compute_cap=False)[0] \
        .compute_cap == "unknown"
    assert parse_compute_cap("8.6") == (8, 6) and parse_compute_cap("[N/A]") == "[N/A]"


def test_name_lookup_does_not_confuse_a10_and_a100() -> None:
    rows = parse_query_rows("NVIDIA A10, 470.1, 22731 MiB\nA100-PCIE-40GB, 470.1, 40536 MiB\n"
                            "NVIDIA A100 80GB PCIe, 470.1, 81920 MiB", with_compute_cap=False)
    assert [r.compute_cap for r in rows] == [(8, 6), (8, 0), (8, 0)]


@pytest.mark.parametrize("banner,expected", [
    ("| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2     |",
     ("535.104.05", "12.2")),
    ("| NVIDIA-SMI 580.65.06              Driver Version: 580.65.06      CUDA Version: 13.0     |",
     ("580.65.06", "13.0")),
    ("| NVIDIA-SMI 410.48                 Driver Version: 410.48                    |",
     ("410.48", None)),
    # Inside a container the NVIDIA-SMI binary may be older than the host's driver.
    ("| NVIDIA-SMI 470.256.02   Driver Version: 580.95.05    CUDA Version: 13.0     |",
     ("580.95.05", "13.0")),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", (None, None)),
])
def test_parse_smi_header(banner: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_smi_header(banner) == expected


def test_toolkit_parsers() -> None:
    assert parse_nvcc_version("Cuda compilation tools, release 11.2, V11.2.152") == "11.2"
    assert parse_nvcc_version("bash: nvcc: command not found") is None
    assert parse_cuda_version_json('{"cuda": {"name": "CUDA SDK", "version": "12.2.2"}}') == "12.2.2"
    # A truncated file still yields the version.
    assert parse_cuda_version_json('{\n "cuda" : {\n "name" : "CUDA SDK",\n "version" : "11.8.0"\n },\n "cuda_cc') \
        == "11.8.0"
    assert parse_cuda_version_json("{}") is None
    assert parse_cuda_version_txt("CUDA Version 10.2.89\n") == "10.2.89"


def test_split_sections_ignores_text_before_the_first_marker() -> None:
    secs = split_sections("noise\n== gpu.query rc=0 ==\nrow\n== gpu.nvcc rc=0 path=/usr/bin/nvcc ==\nx\n")
    assert [(s.name, s.attrs, s.body) for s in secs] == [
        ("query", {"rc": "0"}, "row"), ("nvcc", {"rc": "0", "path": "/usr/bin/nvcc"}, "x")]


def test_version_mismatch_is_an_error_not_no_gpu() -> None:
    facts = parse_gpu_probe("== gpu.query rc=18 ==\nFailed to initialize NVML: Driver/library "
                            "version mismatch\nNVML library version: 535.183\n== gpu.pci ==\n"
                            "0000:00:1e.0 0x1eb8 0x030200\n")
    assert facts.gpus == [] and facts.smi
    assert facts.error == "Failed to initialize NVML: Driver/library version mismatch"
    assert not choose_mxnet_build(facts).ok


def test_empty_output_is_an_error() -> None:
    facts = parse_gpu_probe("")
    assert facts.error == "the probe printed no gpu.query section" and not facts.smi
    assert not choose_mxnet_build(facts).ok


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------
def test_readiness_report_refused() -> None:
    facts = load("h200.txt")
    text = readiness_report(facts, choose_mxnet_build(facts))
    assert "GPU: 1 x NVIDIA H200, 140.4 GiB, compute capability 9.0" in text
    assert "Driver: 580.159.04, supports CUDA up to 13.0" in text
    assert "CUDA toolkit: 13.0" in text and "libcuda.so.1: yes" in text
    assert "MXNet 1.9.1: REFUSED" in text
    assert "Advice: " in text and "mxnet_allow_cpu_fallback" in text


def test_readiness_report_ok_and_inferred_driver_cuda() -> None:
    facts = load("2x-v100.txt")
    text = readiness_report(facts, choose_mxnet_build(facts))
    assert "GPU: 2 x Tesla V100-SXM2-16GB, 15.8 GiB, compute capability 7.0 (from the model name" in text
    assert "MXNet 1.9.1: OK: mxnet-cu110==1.9.1 on 2 GPU(s)" in text
    k80 = load("k80-old-driver.txt")
    assert "Driver: 410.48, supports CUDA up to 10.0 (from NVIDIA's table)" in \
        readiness_report(k80, choose_mxnet_build(k80))
    l4 = load("l4.txt")
    assert "Env: MXNET_USE_FUSION=0" in readiness_report(l4, choose_mxnet_build(l4))


def test_gpu_table_rows() -> None:
    results = {name: (load(f), choose_mxnet_build(load(f))) for name, f in
               [("gpu-1", "2x-v100.txt"), ("gpu-2", "h200.txt"), ("cpu-1", "no-driver.txt"),
                ("gpu-3", "driver-failing.txt")]}
    rows = {r["host"]: r for r in gpu_table_rows(results)}
    assert rows["gpu-1"] == {
        "host": "gpu-1", "gpu": "Tesla V100-SXM2-16GB", "count": "2", "memory_gib": "15.8",
        "driver": "450.80.02", "driver_cuda": "11.0", "toolkit": "-", "compute_cap": "7.0",
        "build": "mxnet-cu110==1.9.1", "can_run": "yes",
        "reason": results["gpu-1"][1].reason,
    }
    assert (rows["gpu-2"]["can_run"], rows["gpu-2"]["compute_cap"], rows["gpu-2"]["toolkit"]) == \
        ("no", "9.0", "13.0")
    assert "above 8.6" in rows["gpu-2"]["reason"]
    assert (rows["cpu-1"]["gpu"], rows["cpu-1"]["count"], rows["cpu-1"]["build"],
            rows["cpu-1"]["can_run"]) == ("-", "0", "mxnet==1.9.1", "yes")
    assert (rows["gpu-3"]["gpu"], rows["gpu-3"]["can_run"]) == ("driver error", "no")


# --------------------------------------------------------------------------------------
# The bash command itself, against fake nvidia-smi binaries
# --------------------------------------------------------------------------------------
FAKE_470 = """#!/bin/sh
case "$*" in
  *compute_cap*) echo 'Field "compute_cap" is not a valid field to query.'; echo; exit 2;;
  *--query-gpu*) echo 'NVIDIA A10G, 470.182.03, 22731 MiB'; exit 0;;
  *) cat <<'EOF'
Tue Jun 13 08:02:11 2023
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 470.182.03   Driver Version: 470.182.03   CUDA Version: 11.4     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |
|===============================+======================+======================|
|   0  NVIDIA A10G         On   | 00000000:00:1E.0 Off |                    0 |
EOF
esac
"""
FAKE_FAILING = """#!/bin/sh
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."
echo
exit 9
"""


def run_command(tmp_path: Path, fake: str | None, shell_opts: str = "") -> subprocess.CompletedProcess:
    """COMMAND with PATH = a directory holding the fake nvidia-smi (or none) and links to
    the few tools it uses, so a real nvidia-smi on this machine stays out of sight."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("timeout", "readlink", "cat", "head", "grep", "ldconfig", "sh"):
        found = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if found:
            (bindir / tool).symlink_to(found)
    if fake is not None:
        smi = bindir / "nvidia-smi"
        smi.write_text(fake)
        smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": str(bindir)}
    return subprocess.run([shutil.which("bash") or "/bin/bash", *shell_opts.split(), "-c",
                           COMMAND + "\necho END-OF-PROBE"],
                          capture_output=True, text=True, env=env, timeout=60)


def test_command_on_an_old_driver_requeries_without_compute_cap(tmp_path: Path) -> None:
    done = run_command(tmp_path, FAKE_470)
    assert done.returncode == 0
    facts = parse_gpu_probe(done.stdout)
    assert [(g.name, g.compute_cap, g.cc_source) for g in facts.gpus] == \
        [("NVIDIA A10G", (8, 6), "name")]
    assert (facts.driver_version, facts.driver_cuda, facts.error) == ("470.182.03", "11.4", None)
    assert "== gpu.query rc=2 ==" in done.stdout and "== gpu.query-nocc rc=0 ==" in done.stdout


def test_command_with_a_failing_driver_still_exits_0(tmp_path: Path) -> None:
    # Run under errexit/nounset/pipefail, as a batched probe script might.
    done = run_command(tmp_path, FAKE_FAILING, "-euo pipefail")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("END-OF-PROBE")
    facts = parse_gpu_probe(done.stdout)
    assert facts.gpus == [] and "couldn't communicate" in (facts.error or "")
    assert "== gpu.query rc=9 ==" in done.stdout


def fake_smi_on_path(tmp_path: Path, fake: str) -> dict[str, str]:
    """An environment whose PATH finds this fake nvidia-smi first, then the system's tools."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text(fake)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}


def test_command_reads_nothing_from_stdin(tmp_path: Path) -> None:
    # The engine feeds its batched probe to `bash -s`: the lines after the fact must still run.
    env = fake_smi_on_path(tmp_path, FAKE_470)
    done = subprocess.run(["bash", "-s"], input=f"( {COMMAND}\n) 2>&1\necho END-OF-PROBE\n",
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("END-OF-PROBE")
    assert parse_gpu_probe(done.stdout).gpus[0].name == "NVIDIA A10G"


def test_gpu_fact_in_the_engines_batched_probe(tmp_path: Path) -> None:
    from fleet.engine.remote import Probe
    env = fake_smi_on_path(tmp_path, FAKE_470)
    probe = Probe([GPU_FACT], [])
    done = subprocess.run(["bash", "-s"], input=probe.script(), capture_output=True, text=True,
                          env=env, timeout=60)
    facts, _verifies, _pending, errors = probe.parse(done.stdout)
    assert errors == {}
    assert choose_mxnet_build(facts["gpu"]).package == "mxnet-cu114"


def test_a_wedged_driver_is_an_error() -> None:
    facts = parse_gpu_probe("== gpu.query rc=124 ==\n== gpu.libcuda ==\nyes\n")
    assert facts.error == "nvidia-smi did not answer within 20 s (wedged driver?)"
    assert "wedged" in choose_mxnet_build(facts).reason


def test_command_without_nvidia_smi(tmp_path: Path) -> None:
    done = run_command(tmp_path, None, "-euo pipefail")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("END-OF-PROBE")
    facts = parse_gpu_probe(done.stdout)
    assert (facts.smi, facts.gpus, facts.error) == (False, [], None)
    assert "== gpu.query rc=127 ==" in done.stdout and "== gpu.libcuda ==" in done.stdout


# --------------------------------------------------------------------------------------
# scripts/gpu-check
# --------------------------------------------------------------------------------------
def gpu_check(*args: str, site: bool = False) -> subprocess.CompletedProcess:
    # -S: no site-packages, as on a bare GPU machine (no yaml, rich, fabric, invoke).
    flags = [] if site else ["-S"]
    return subprocess.run([sys.executable, *flags, str(SCRIPT), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_script_is_executable_python3() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")


@requires(shutil.which("nvidia-smi") is None, "this machine has a GPU driver: the no-GPU case cannot be shown on it")
def test_script_on_this_cpu_machine() -> None:
    done = gpu_check()
    assert done.returncode == 0, done.stderr
    assert "GPU: none (no nvidia-smi)" in done.stdout
    assert "MXNet 1.9.1: OK: mxnet==1.9.1 (CPU)" in done.stdout
    doc = json.loads(gpu_check("--json").stdout)
    assert doc["facts"]["gpus"] == [] and doc["facts"]["smi"] is False
    assert (doc["choice"]["package"], doc["choice"]["ok"], doc["spec"]) == \
        ("mxnet", True, "mxnet==1.9.1")
    # --compute has nothing to run here and says why, without failing.
    done = gpu_check("--compute")
    assert done.returncode == 0 and "Compute: nothing to run" in done.stdout
    # Asking for a GPU on a CPU machine is refused.
    assert gpu_check("--prefer", "gpu").returncode == 3


@pytest.mark.parametrize("args,rc,text", [
    (["--from", "tests/data/gpu/h200.txt"], 3, "is above 8.6"),
    (["--from", "tests/data/gpu/h200.txt", "--allow-cpu-fallback"], 0, "fell back"),
    (["--from", "tests/data/gpu/t4.txt"], 0, "mxnet-cu117==1.9.1 on 1 GPU(s)"),
    (["--from", "tests/data/gpu/t4.txt", "--prefer", "cpu"], 0, "mxnet==1.9.1 (CPU)"),
    (["--from", "tests/data/gpu/a10g.txt", "--cuda", "cu117"], 3, "supports CUDA up to 11.4"),
    (["--from", "tests/data/gpu/t4.txt", "--cuda", "cu118"], 2, ""),
])
def test_script_on_recordings(args: list[str], rc: int, text: str) -> None:
    done = gpu_check(*args)
    assert done.returncode == rc, done.stdout + done.stderr
    assert text in done.stdout


def test_script_json_on_a_recording(tmp_path: Path) -> None:
    saved = tmp_path / "probe.txt"
    done = gpu_check("--from", "tests/data/gpu/2x-v100.txt", "--json", "--save-probe", str(saved))
    doc = json.loads(done.stdout)
    assert doc["choice"]["package"] == "mxnet-cu110" and doc["choice"]["expected_gpus"] == 2
    assert [g["compute_cap"] for g in doc["facts"]["gpus"]] == [[7, 0], [7, 0]]
    assert saved.read_text() == (DATA / "2x-v100.txt").read_text()
