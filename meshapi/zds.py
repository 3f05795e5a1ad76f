"""Node agent ↔ ztunnel protocol over a Unix ``SOCK_SEQPACKET`` socket on the node.

One JSON message per packet (at most :data:`MAX_MESSAGE_BYTES`). The ztunnel is the server.

* ztunnel → agent, first, on every connection:
  ``{"type": "hello", "version": 1, "pods": [uid, ...]}`` — the pods it currently serves.
* agent → ztunnel, each with a ``seq`` the ztunnel acknowledges:
  ``{"type": "add", "seq": n, "workload": {...}}`` with the pod's netns file descriptor passed
  in the same packet as ``SCM_RIGHTS`` — start serving the pod (idempotent: re-adding a served pod
  replaces its netns and listeners);
  ``{"type": "keep", "seq": n, "uid": ...}`` — the pod is still wanted as it is, touch nothing;
  ``{"type": "delete", "seq": n, "uid": ...}`` — stop serving the pod, close its listeners;
  ``{"type": "snapshot_complete", "seq": n}`` — every wanted pod has been added or kept since
  ``hello``; the ztunnel drops the pods that were not.
* ztunnel → agent: ``{"type": "ack", "seq": n, "error": null | "what went wrong"}``.

A restarted agent therefore sends ``keep`` for the pods the ztunnel already serves and ``add``
only for the others; a restarted ztunnel gets the whole set again as ``add``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from meshapi import wire
from meshapi.errors import WireError
from meshapi.model import Workload

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
ACK_TIMEOUT_SECONDS = 5.0
#: the largest ``seq`` (an ack carries it back, so both ends must accept it)
MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Hello:
    pods: tuple[str, ...]
    version: int = PROTOCOL_VERSION
    type: Literal["hello"] = "hello"


@dataclass(frozen=True, slots=True)
class AddPod:
    seq: int
    workload: Workload
    #: how the agent redirects the pod (``iptables``, ``ebpf``), shown by the ztunnel's admin
    redirection: str | None = None
    type: Literal["add"] = "add"


@dataclass(frozen=True, slots=True)
class KeepPod:
    seq: int
    uid: str
    type: Literal["keep"] = "keep"


@dataclass(frozen=True, slots=True)
class DeletePod:
    seq: int
    uid: str
    type: Literal["delete"] = "delete"


@dataclass(frozen=True, slots=True)
class SnapshotComplete:
    seq: int
    type: Literal["snapshot_complete"] = "snapshot_complete"


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    error: str | None = None
    type: Literal["ack"] = "ack"


Message = Hello | AddPod | KeepPod | DeletePod | SnapshotComplete | Ack


def encode(message: Message) -> bytes:
    body: dict[str, Any]
    match message:
        case Hello(pods=pods, version=version):
            body = {"type": "hello", "version": version, "pods": list(pods)}
        case AddPod(seq=seq, workload=workload, redirection=redirection):
            body = {"type": "add", "seq": seq, "workload": dict(workload.to_wire())}
            if redirection is not None:
                body["redirection"] = redirection
        case KeepPod(seq=seq, uid=uid) | DeletePod(seq=seq, uid=uid):
            body = {"type": message.type, "seq": seq, "uid": uid}
        case SnapshotComplete(seq=seq):
            body = {"type": "snapshot_complete", "seq": seq}
        case Ack(seq=seq, error=error):
            body = {"type": "ack", "seq": seq, "error": error}
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError("", f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def decode(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError("", f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    obj = wire.as_mapping(wire.loads(data), "")
    kind = wire.req_str(obj, "type", "")
    if kind == "hello":
        pods = wire.as_list(obj.get("pods", []), "pods")
        if not all(isinstance(p, str) for p in pods):
            raise WireError("pods", "expected a list of pod uids")
        return Hello(tuple(pods), wire.req_int(obj, "version", "", 1, 1 << 16))
    seq = wire.req_int(obj, "seq", "", 0, MAX_SEQ)
    if kind == "add":
        redirection = obj.get("redirection")
        if redirection is not None and not isinstance(redirection, str):
            raise WireError("redirection", "expected a string")
        return AddPod(seq, Workload.from_wire(obj.get("workload"), "workload"), redirection)
    if kind == "keep":
        return KeepPod(seq, wire.req_str(obj, "uid", ""))
    if kind == "delete":
        return DeletePod(seq, wire.req_str(obj, "uid", ""))
    if kind == "snapshot_complete":
        return SnapshotComplete(seq)
    if kind == "ack":
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            raise WireError("error", "expected a string or null")
        return Ack(seq, error)
    raise WireError("type", f"unknown message type {kind!r}")
