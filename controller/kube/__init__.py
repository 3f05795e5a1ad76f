"""The controller's Kubernetes edge: the only package of the controller that imports the
``kubernetes`` client (an import-linter contract keeps it so).

* :mod:`.client`: configuration loading and raw JSON requests (why raw: see its docstring).
* :mod:`.source`: :class:`~.source.KubeSource`, the config source that lists and watches Pods,
  Namespaces, Services, EndpointSlices, ServiceAccounts and the nodemesh policy CRDs and feeds
  :func:`controller.translate.translate`.
* :mod:`.tokenreview`: the TokenReview and pod lookups behind
  :class:`controller.auth.TokenReviewAuthenticator`.
* :mod:`.lease`: leader election on a ``coordination.k8s.io/v1`` Lease.
* :mod:`.castore`: the CA root in a Secret, and its certificate published in a ConfigMap.

The decisions live outside, pure: :mod:`meshapi.kubewatch` (list/watch bookkeeping),
:mod:`controller.leader` (Lease rules), :mod:`controller.auth` (what a TokenReview means).
"""
