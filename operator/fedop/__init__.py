"""fedkube's Kubernetes operator: ``kopf run -m fedop`` reconciles FederatedJobs.

Importing the package registers the kopf handlers (``fedop.handlers``). The layers, from the
edge inwards: ``handlers`` (kopf wiring, parse at the edge) -> ``controller`` (queue, resync)
-> ``reconcile`` (pure decisions) with ``builders`` (pure objects) -> ``apply`` -> ``kube``
(the only Kubernetes API caller) and ``store_view`` (the job's object store).
"""

from __future__ import annotations

from fedop import handlers as handlers
