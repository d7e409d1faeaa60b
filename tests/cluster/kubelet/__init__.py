"""The process kubelet: registers fake nodes and runs their pods as local processes."""

from tests.cluster.kubelet.kubelet import Kubelet

__all__ = ["Kubelet"]
