"""Reaching hosts: one connection interface, direct SSH (Fabric/Paramiko) and the keeper that holds connections open."""
