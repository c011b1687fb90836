"""Jupyter Fleet: an Ansible-style playbook runner for course Jupyter machines."""

__version__ = "0.1.0"
