"""R kernel: r-base-core and r-cran-irkernel (which ships the `ir` kernelspec in
/usr/share/jupyter/kernels/ir, a folder every Jupyter server searches)."""
from __future__ import annotations

import re

from fleet.engine.roles import RoleContext
from fleet.engine.steps import Apt, Command, Verify
from fleet.inventory.variables import HostVars
from fleet.shell import q

CRAN_LIBRARY = "/usr/lib/R/site-library"
KERNELSPEC_CHECK = """import json, sys
specs = json.load(sys.stdin)["kernelspecs"]
assert "ir" in specs, sorted(specs)
print("ir kernel at", specs["ir"]["resource_dir"])
"""


def steps(v: HostVars, ctx: RoleContext) -> list:
    items: list = [Apt(("r-base-core", "r-cran-irkernel", *v.r_kernel_apt_packages),
                       cache_max_age=v.apt_cache_max_age, lock_timeout=v.apt_lock_timeout)]
    for index, package in enumerate(v.r_kernel_cran_packages):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9.]*", package):
            raise ctx.fail(f"r_kernel_cran_packages[{index}]", f"not an R package name: {package!r}")
        # The check is its own probe (`unless`), not hidden in the install one-liner. Installed into
        # R's site library for the distribution (root's alone; /usr/local/lib/R/site-library is
        # writable by group staff, so the root guard would refuse it), which every R searches.
        items.append(Command(
            f"Rscript --vanilla -e {q(f'install.packages({package!r}, lib={CRAN_LIBRARY!r}, repos={v.r_kernel_cran_repo!r})')} "
            f"-e {q(f'quit(status = !requireNamespace({package!r}, quietly = TRUE))')}",
            unless=f"Rscript --vanilla -e {q(f'quit(status = !requireNamespace({package!r}, quietly = TRUE))')}",
            label=f"CRAN package {package}", writes=(f"{CRAN_LIBRARY}/{package}",)))
    jupyter = q(v.jupyter_venv + "/bin/jupyter")
    items.append(Verify("the ir kernelspec is visible to the Jupyter server",
                        f"{jupyter} kernelspec list --json | python3 -I -c {q(KERNELSPEC_CHECK)}",
                        user=v.jupyter_user))
    return items
