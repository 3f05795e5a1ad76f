"""Which pods are in the mesh: one rule, used by the controller's translation and by the node
agent (which decides at pod creation, before the controller knows the pod's IP)."""

from __future__ import annotations

from collections.abc import Mapping

from meshapi.constants import ENROLLMENT_ENABLED, ENROLLMENT_LABEL, ENROLLMENT_OPT_OUT


def is_enrolled(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
    """A pod labelled ``enabled`` is enrolled; otherwise it follows its namespace's label unless
    the pod opts out with ``none``."""
    pod_value = pod_labels.get(ENROLLMENT_LABEL)
    if pod_value == ENROLLMENT_ENABLED:
        return True
    return namespace_labels.get(ENROLLMENT_LABEL) == ENROLLMENT_ENABLED and (
        pod_value != ENROLLMENT_OPT_OUT
    )
