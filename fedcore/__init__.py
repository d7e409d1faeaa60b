"""fedcore: the federated runtime of fedkube.

It runs inside the cluster's pods and on a laptop alike. This module imports nothing heavy:
the operator imports ``fedcore.spec``, ``fedcore.layout`` and ``fedcore.store`` and must not
pull in torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
