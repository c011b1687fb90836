"""Local Debian test hosts (systemd-nspawn) for the tests, the demo and the benchmark."""
