"""Inventories: YAML files (native and Ansible shape), host patterns, variables and where each came from."""
