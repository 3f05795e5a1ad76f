"""The node agent on Kubernetes (``--source kubernetes``): the only place, with
``controller/kube``, that imports the ``kubernetes`` client (see :mod:`node_agent.kube.runtime`).
"""
