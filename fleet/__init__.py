"""Jupyter Fleet: an Ansible-style playbook runner for course Jupyter machines.

inventory/ reads who the hosts are and what each is given; engine/ turns roles into per-host
plans, probes, applies and reports; transport/ reaches the hosts; aws/ runs the course's EC2
side; testhosts/ boots local Debian hosts for the tests, the demo and the benchmark. cli.py,
app.py and access.py sit on top, beside the shared basics (errors, shell, yamlfile, atomic).
"""

__version__ = "0.1.0"
