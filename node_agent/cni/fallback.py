"""What the CNI plugin may do on its own while the node agent cannot be reached.

The plugin relays every ADD to the agent, which decides whether the pod is enrolled. While the
agent is down (a crash, a rolling update of the DaemonSet), nobody can decide, and failing every
ADD would stop *every* new pod on the node, including pods that have nothing to do with the
mesh (the kubelet only retries). So the agent keeps a file next to its socket that lists the
namespaces whose new pods may start without it: namespaces it last saw without the enrollment
label, and in which none of this node's pods opts in with its own label. When the agent is
unreachable, the plugin passes an ADD through (returns the previous result unchanged) only for a
pod of a listed namespace, and fails closed for every other pod: a pod of an enrolled namespace
never starts unmeshed because the agent was down.

What is not covered, by construction: a namespace labelled for the mesh *while* the agent is
down, and a pod that opts in with its own label in a listed namespace, start unmeshed. The
agent's /proc scan redirects them when it is back (annotation ``pending`` until then); their
connections opened before that stay plain. ``--cni-fallback-file=""`` turns this off (every ADD
fails closed while the agent is down).

File format (version 1), read by ``cni/nodemesh-cni.c``; text, ``\\n``-terminated lines::

    NODEMESH-CNI-FALLBACK 1
    # comment lines (who wrote it, when)
    <namespace>
    ...

Invariants:

* Only names that are valid Kubernetes namespace names (DNS-1123 labels) are written, so a line
  is always exactly one name.
* The file is replaced atomically (temporary file in the same directory, fsync, rename): the
  plugin reads either the old list or the new one, never half of one.
* The file is at most :data:`MAX_BYTES` (the plugin reads no more; a list that would not fit is
  not written and the old file is removed, so the plugin fails closed).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from meshapi.constants import ENROLLMENT_ENABLED, ENROLLMENT_LABEL

MAGIC = "NODEMESH-CNI-FALLBACK 1"
FILE_NAME = "cni-fallback"
#: where the plugin looks unless NODEMESH_CNI_FALLBACK_FILE says otherwise; the agent writes
#: FILE_NAME next to its CNI socket, which is this by default
DEFAULT_PATH = "/var/run/nodemesh/" + FILE_NAME
#: mirrored in cni/nodemesh-cni.c (MAX_FALLBACK_BYTES)
MAX_BYTES = 1024 * 1024

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def passthrough_namespaces(
    namespaces: Mapping[str, Mapping[str, str]],
    pods: Iterable[tuple[str, Mapping[str, str]]],
) -> list[str]:
    """Sorted names of the namespaces whose new pods may start while the agent is down.

    ``namespaces``: every namespace's labels; ``pods``: (namespace, labels) of this node's pods.
    A namespace is listed when it is not enrolled and none of those pods opts in by label.
    Invalid names are left out (the plugin then fails closed for them).
    """
    opted_in = {ns for ns, labels in pods if labels.get(ENROLLMENT_LABEL) == ENROLLMENT_ENABLED}
    return sorted(
        name
        for name, labels in namespaces.items()
        if labels.get(ENROLLMENT_LABEL) != ENROLLMENT_ENABLED
        and name not in opted_in
        and _NAMESPACE.fullmatch(name)
    )


def render(node: str, names: Iterable[str], now: float | None = None) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    lines = [
        MAGIC,
        f"# written by the nodemesh node agent of node {_one_line(node)} at {stamp}",
        "# namespaces whose new pods the CNI plugin lets start while the agent is unreachable",
    ]
    lines.extend(names)
    return ("\n".join(lines) + "\n").encode()


def parse(data: bytes) -> list[str]:
    """The namespaces of a fallback file (for tests and ``status``); ValueError if malformed."""
    text = data.decode()
    lines = text.split("\n")
    if not lines or lines[0] != MAGIC:
        raise ValueError(f"first line is not {MAGIC!r}")
    if not text.endswith("\n"):
        raise ValueError("last line is not terminated")
    names = [ln for ln in lines[1:-1] if not ln.startswith("#")]
    for n in names:
        if not _NAMESPACE.fullmatch(n):
            raise ValueError(f"{n!r} is not a namespace name")
    return names


def write(path: Path, content: bytes) -> None:
    """Replace ``path`` atomically with ``content`` (mode 0644: the runtime's plugin reads it).
    Content over :data:`MAX_BYTES` is refused with ValueError after removing the old file."""
    if len(content) > MAX_BYTES:
        remove(path)
        raise ValueError(
            f"the CNI fallback list is {len(content)} bytes, over the plugin's limit of "
            f"{MAX_BYTES}; removed {path}: new pods fail while the agent is down"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _one_line(s: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in s)
