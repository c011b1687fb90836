"""Jupyter Fleet: an Ansible-style playbook runner for course Jupyter machines.

inventory/ reads who the hosts are and what each is given; engine/ turns roles into per-host
plans, probes, applies and reports; transport/ reaches the hosts; aws/ runs the course's EC2
side; testhosts/ boots local Debian hosts for the tests, the demo and the benchmark. cli.py,
app.py and access.py sit on top, beside the shared basics (errors, shell, yamlfile, atomic).
"""

__version__ = "0.1.0"


def _refuse_a_copy_without_its_checkout() -> None:
    """The package runs from its source checkout: the roles, templates, benchmark and inventories
    it reads sit beside it there (roles/, templates/, bench/, inventory/), and its state folder,
    .fleet/, is the checkout's. A `pip install .` copies the package alone into site-packages, so
    such a copy is refused here, before anything runs, with the way that works. (A copy of the
    package elsewhere, as some tests make, is left alone.)"""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    installed = here.parent.name in ("site-packages", "dist-packages")
    if not installed or ((here.parent / "roles" / "__init__.py").is_file() and (here.parent / "templates").is_dir()):
        return
    raise ImportError(
        f"jupyter-fleet runs from its source checkout, but this copy of the package ({here}) has no roles/ "
        "and templates/ beside it (a `pip install .` copies the package alone). Install it from a clone "
        "instead, editable: `git clone <repository> jupyter-fleet && cd jupyter-fleet && pip install -e '.[test]'` "
        "(or, as root, `bash scripts/install-deps`), then run `invoke` in that folder.")


_refuse_a_copy_without_its_checkout()
