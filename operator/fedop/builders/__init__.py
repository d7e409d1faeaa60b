"""Pure builders of the Kubernetes objects one FederatedJob owns: spec in, dicts out, no I/O.

Every name is deterministic (``names``), so an operator restart finds what it made instead
of making it twice.
"""
