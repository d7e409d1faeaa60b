"""fedkube's Kubernetes operator: ``kopf run -m fedop`` reconciles FederatedJobs.

Importing the package registers the kopf handlers of its mode (``fedop.settings.operator_mode``):
``fedop.handlers`` for a coordinator (FederatedJobs), ``fedop.site_handlers`` for a site
(FederatedSites). The layers, from the edge inwards: ``handlers`` (kopf wiring, parse at the
edge) -> ``controller`` (queue, resync) -> ``reconcile`` (pure decisions) with ``builders``
(pure objects) -> ``apply`` -> ``kube`` (the only Kubernetes API caller) and ``store_view``
(the job's object store); the site's ``site_handlers`` -> ``site_reconcile`` -> ``kube`` and
``site_store`` likewise.
"""

from __future__ import annotations

from fedop.settings import operator_mode

if operator_mode() == "site":
    from fedop import site_handlers as site_handlers
else:
    from fedop import handlers as handlers
