"""Julia kernel: an official Julia release tarball, verified against its published SHA-256 and
unpacked side by side under a prefix, `julia` on PATH, and IJulia in a shared depot with its
kernelspec in the system-wide Jupyter data dir, so every user sees it."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

from fleet.engine.roles import RoleContext
from fleet.engine.steps import Command, Directory, Verify
from fleet.inventory.variables import HostVars
from fleet.shell import q
from roles.julia_kernel.julia import SHA256, VERSION, JuliaInstall, Link, major_minor, run_resolver

KERNEL_CHECK = """import json, sys
name, binary = sys.argv[1], sys.argv[2]
specs = json.load(sys.stdin)["kernelspecs"]
assert name in specs, f"no {name} kernelspec among {sorted(specs)}"
argv = specs[name]["spec"]["argv"]
assert argv[0] == binary, f"{name} starts {argv[0]}, not {binary}"
print(name, "kernel at", specs[name]["resource_dir"], "runs", argv[0])
"""
# The installed kernelspec starts this version's julia and IJulia is in the depot.
KERNEL_IS_CURRENT = ("import json, sys; "
                     "sys.exit(json.load(open(sys.argv[1]))['argv'][0] != sys.argv[2])")


# The knobs are prefixed `julia_`, not `julia_kernel_`, so the engine's typo check (which looks
# for the role's name as prefix) does not cover them: the role checks them itself.
KNOBS = set(yaml.safe_load((Path(__file__).parent / "spec.yml").read_text()))


def julia_string(text: str) -> str:
    """A Julia string literal: no interpolation, no escapes left open."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def steps(v: HostVars, ctx: RoleContext) -> list:
    for key in sorted(k for k in v if k.startswith("julia_") and k not in KNOBS):
        close = difflib.get_close_matches(key, sorted(KNOBS), n=1)
        raise ctx.fail(key, "unknown knob for role julia_kernel" + (f" (did you mean {close[0]}?)" if close else ""))
    version = str(v.julia_version)
    if not VERSION.match(version):
        raise ctx.fail("julia_version", f"expected a Julia release like 1.10.5, got {version!r}")
    mirror = str(v.julia_mirror).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", mirror):
        raise ctx.fail("julia_mirror", f"expected an http(s) URL like https://julialang-s3.julialang.org/bin, got {mirror!r}")
    pin = str(v.julia_sha256 or "").strip().lower()
    if pin and not SHA256.match(pin):
        raise ctx.fail("julia_sha256", f"expected 64 hex digits (or empty for the published checksum), got {pin!r}")

    install = JuliaInstall(version, mirror=mirror, prefix=v.julia_prefix, sha256=pin,
                           resolver=run_resolver(ctx.resolver))
    depot, data_dir, binary = v.julia_depot, v.julia_jupyter_data_dir.rstrip("/"), install.binary
    spec_name = f"julia-{major_minor(version)}"
    kernel_json = f"{data_dir}/kernels/{spec_name}/kernel.json"
    code = (f'using Pkg; Pkg.add("IJulia"); using IJulia; '
            f'installkernel("Julia", env=Dict("JULIA_DEPOT_PATH"=>{julia_string(depot)}))')
    ijulia = (f"__retry 2 env JULIA_DEPOT_PATH={q(depot)} JUPYTER_DATA_DIR={q(data_dir)} JUPYTER={q(v.julia_jupyter)} "
              f"{q(binary)} -e {q(code)}\n"
              f"chmod -R a+rX {q(depot)} {q(data_dir + '/kernels/' + spec_name)}")
    current = (f"[ -d {q(depot + '/packages/IJulia')} ] && "
               f"python3 -I -c {q(KERNEL_IS_CURRENT)} {q(kernel_json)} {q(binary)}")
    jupyter = q(v.julia_jupyter)
    check = (f"{jupyter} kernelspec list --json | python3 -I -c {q(KERNEL_CHECK)} {q(spec_name)} {q(binary)} && "
             f"out=$(julia --version) && echo \"$out\" && [ \"$out\" = {q('julia version ' + version)} ]")
    return [
        install,
        Link("/usr/local/bin/julia", binary),
        Directory(depot, owner="root", group="root", mode="0755"),
        Command(ijulia, unless=current, label=f"IJulia and the {spec_name} kernelspec in {data_dir}",
                writes=(f"{depot}/packages", f"{data_dir}/kernels/{spec_name}")),
        Verify(f"the {spec_name} kernelspec is visible to Jupyter and julia is {version}", check,
               user=v.jupyter_user),
    ]
