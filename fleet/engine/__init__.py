"""The engine: roles and their specs, compiling plans, facts, steps, the host scripts, running, results and reports."""
