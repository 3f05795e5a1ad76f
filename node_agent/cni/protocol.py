"""The plugin↔agent wire protocol (version 1) and the CNI input/output it carries. Pure: no I/O.

Request (written by ``cni/nodemesh-cni.c``, then ``shutdown(SHUT_WR)``)::

    NODEMESH-CNI 1\\n
    CNI_COMMAND=ADD\\n            one line per CNI_* variable the runtime set, in any order:
    CNI_CONTAINERID=...\\n        CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
    ...                           CNI_ARGS, CNI_PATH (each at most once, UTF-8, no newline)
    \\n
    <the network configuration exactly as the runtime wrote it on the plugin's stdin>

Response (then the agent closes the connection)::

    NODEMESH-CNI 1 <exit code, 0-255>\\n
    <bytes for the plugin's stdout>

Invariants:

* :func:`parse_request` either returns a fully validated :class:`Envelope` or raises
  :class:`~node_agent.cni.errors.CniRequestError` naming the variable or JSON field at fault
  (``prevResult.ips[1].address``), with the CNI code the spec assigns to that kind of fault.
* The raw JSON stays here: backends get frozen request dataclasses; the ``prevResult`` is kept
  only to be passed through, unchanged but for its ``cniVersion``, as the ADD result.
* The commands are the ones the plugin relays (ADD, DEL, CHECK, STATUS); VERSION and GC are
  answered by the plugin itself.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NewType, NotRequired, TypedDict, cast

from meshapi import wire
from meshapi.errors import WireError
from meshapi.ids import PodUid, is_dns_label, is_dns_subdomain
from node_agent.cni.errors import CniCode, CniRequestError

MAGIC: Final = b"NODEMESH-CNI 1"
#: the plugin refuses larger configurations; the agent accepts the same plus the header lines
MAX_CONFIG_BYTES: Final = 1024 * 1024
MAX_REQUEST_BYTES: Final = MAX_CONFIG_BYTES + 64 * 1024

#: 0.3.x is in: flannel and calico still write "0.3.1" configs, whose result format is 0.4.0's.
SUPPORTED_VERSIONS: Final = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
#: CHECK exists since 0.4.0
CHECK_VERSIONS: Final = ("0.4.0", "1.0.0", "1.1.0")

ENV_KEYS: Final = (
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
)

ContainerId = NewType("ContainerId", str)
PodIp = ipaddress.IPv4Address | ipaddress.IPv6Address

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,1023}$")
_POD_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]{0,127}$")
_MAX_PATH = 4096


class Command(enum.Enum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    STATUS = "STATUS"


# --- wire types (the network configuration as JSON) ------------------------------------------


class InterfaceWire(TypedDict):
    name: str
    mac: NotRequired[str]
    sandbox: NotRequired[str]


class IpConfigWire(TypedDict):
    address: str
    version: NotRequired[str]  # 0.3.x/0.4.0 only
    gateway: NotRequired[str]
    interface: NotRequired[int]


class ResultWire(TypedDict, total=False):
    cniVersion: str
    interfaces: list[InterfaceWire]
    ips: list[IpConfigWire]
    routes: list[object]
    dns: object


class NetConfWire(TypedDict):
    cniVersion: str
    name: str
    type: str
    prevResult: NotRequired[ResultWire]


# --- what backends get -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodAttachment:
    """One pod sandbox's attachment to the network, as ADD, DEL and CHECK name it."""

    container_id: ContainerId
    netns: str  # path to the pod's network namespace; "" on a DEL after the namespace is gone
    ifname: str
    pod_namespace: str
    pod_name: str
    pod_uid: PodUid | None
    infra_container_id: str | None
    network_name: str
    cni_version: str


@dataclass(frozen=True, slots=True)
class AddRequest(PodAttachment):
    pod_ips: tuple[PodIp, ...]  # the sandbox interface's addresses from prevResult, in order


@dataclass(frozen=True, slots=True)
class CheckRequest(PodAttachment):
    pod_ips: tuple[PodIp, ...]


@dataclass(frozen=True, slots=True)
class DelRequest(PodAttachment):
    pass


@dataclass(frozen=True, slots=True)
class StatusRequest:
    network_name: str
    cni_version: str


@dataclass(frozen=True, slots=True)
class Envelope:
    command: Command
    cni_version: str
    request: AddRequest | DelRequest | CheckRequest | StatusRequest
    prev_result: ResultWire | None  # only for the ADD passthrough


@dataclass(frozen=True, slots=True)
class CniArgs:
    pod_namespace: str | None
    pod_name: str | None
    pod_uid: PodUid | None
    infra_container_id: str | None


# --- parsing ---------------------------------------------------------------------------------


def split_frame(data: bytes) -> tuple[dict[str, str], bytes]:
    """The CNI variables and the configuration bytes of one request."""
    header, sep, rest = data.partition(b"\n")
    if not sep or header != MAGIC:
        shown = header[:40].decode("utf-8", "replace")
        raise CniRequestError(
            f"not a nodemesh CNI request (first line {shown!r}, expected {MAGIC.decode()!r})",
            "the nodemesh-cni binary in the CNI bin directory and this node agent are from "
            "different nodemesh versions; the agent reinstalls its own binary on start",
            CniCode.AGENT_PROTOCOL,
        )
    env: dict[str, str] = {}
    lineno = 1
    while True:
        line, sep, rest = rest.partition(b"\n")
        lineno += 1
        if not sep:
            raise CniRequestError(
                f"request line {lineno}: the header has no blank line before the configuration",
                code=CniCode.AGENT_PROTOCOL,
            )
        if not line:
            break
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CniRequestError(
                f"request line {lineno}: not UTF-8", code=CniCode.INVALID_ENV
            ) from exc
        key, eq, value = text.partition("=")
        if not eq or key not in ENV_KEYS:
            raise CniRequestError(
                f"request line {lineno}: expected one of {', '.join(ENV_KEYS)} as KEY=VALUE, "
                f"got {text[:60]!r}",
                code=CniCode.AGENT_PROTOCOL,
            )
        if key in env:
            raise CniRequestError(
                f"request line {lineno}: {key} given twice", code=CniCode.AGENT_PROTOCOL
            )
        env[key] = value
    return env, rest


def parse_cni_args(raw: str) -> CniArgs:
    """``CNI_ARGS``: ``K=V`` pairs separated by ``;``; unknown keys only with ``IgnoreUnknown``."""
    pairs: dict[str, str] = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise CniRequestError(
                f"CNI_ARGS: {part[:60]!r} is not KEY=VALUE", code=CniCode.INVALID_ENV
            )
        if key in pairs:
            raise CniRequestError(f"CNI_ARGS: {key} given twice", code=CniCode.INVALID_ENV)
        pairs[key] = value
    ignore = pairs.pop("IgnoreUnknown", "0").lower()
    if ignore not in ("0", "1", "false", "true"):
        raise CniRequestError(
            f"CNI_ARGS: IgnoreUnknown={ignore!r} is not 1, 0, true or false",
            code=CniCode.INVALID_ENV,
        )
    known = ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID", "K8S_POD_INFRA_CONTAINER_ID")
    unknown = sorted(set(pairs) - set(known))
    if unknown and ignore in ("0", "false"):
        raise CniRequestError(
            f"CNI_ARGS: unknown key {unknown[0]} (and no IgnoreUnknown=1)",
            code=CniCode.INVALID_ENV,
        )
    namespace = pairs.get("K8S_POD_NAMESPACE")
    if namespace is not None and not is_dns_label(namespace):
        raise CniRequestError(
            f"CNI_ARGS: K8S_POD_NAMESPACE {namespace[:80]!r} is not a Kubernetes namespace name",
            code=CniCode.INVALID_ENV,
        )
    name = pairs.get("K8S_POD_NAME")
    if name is not None and not is_dns_subdomain(name):
        raise CniRequestError(
            f"CNI_ARGS: K8S_POD_NAME {name[:80]!r} is not a Kubernetes pod name",
            code=CniCode.INVALID_ENV,
        )
    uid = pairs.get("K8S_POD_UID")
    if uid is not None and _POD_UID.fullmatch(uid) is None:
        raise CniRequestError(
            f"CNI_ARGS: K8S_POD_UID {uid[:80]!r} is not a pod UID", code=CniCode.INVALID_ENV
        )
    infra = pairs.get("K8S_POD_INFRA_CONTAINER_ID")
    if infra is not None and _CONTAINER_ID.fullmatch(infra) is None:
        raise CniRequestError(
            f"CNI_ARGS: K8S_POD_INFRA_CONTAINER_ID {infra[:80]!r} is not a container ID",
            code=CniCode.INVALID_ENV,
        )
    return CniArgs(namespace, name, PodUid(uid) if uid is not None else None, infra)


def decode_config(body: bytes, command: str) -> NetConfWire:
    """The configuration: a JSON object with a supported ``cniVersion``, ``name`` and ``type``."""
    if len(body) > MAX_CONFIG_BYTES:
        raise CniRequestError(
            f"network configuration is {len(body)} bytes, more than {MAX_CONFIG_BYTES}",
            command=command,
        )
    try:
        # duplicate keys, NaN/Infinity (also as 1e999: the result passed through would not be
        # JSON), and nesting deeper than wire.MAX_JSON_DEPTH are refused
        raw = wire.loads(body)
    except WireError as exc:
        raise CniRequestError(
            f"network configuration on stdin is not JSON: {exc}",
            "the runtime passes the plugin's entry of the CNI config list, with cniVersion and "
            "name added",
            CniCode.DECODING_FAILURE,
            command=command,
        ) from exc
    if not isinstance(raw, dict):
        raise CniRequestError(
            f"network configuration is a JSON {type(raw).__name__}, not an object",
            code=CniCode.DECODING_FAILURE,
            command=command,
        )
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniRequestError(
            "network configuration: cniVersion is missing or not a string", command=command
        )
    if version not in SUPPORTED_VERSIONS:
        raise CniRequestError(
            f"network configuration: cniVersion {version[:20]!r} is not supported",
            f"nodemesh-cni supports {', '.join(SUPPORTED_VERSIONS)}",
            CniCode.INCOMPATIBLE_VERSION,
            command=command,
        )
    for field in ("name", "type"):
        value = raw.get(field)
        if not isinstance(value, str) or not value:
            raise CniRequestError(
                f"network configuration: {field} is missing or not a non-empty string",
                command=command,
                cni_version=version,
            )
    return cast(NetConfWire, raw)


def _result_error(msg: str, command: str, version: str) -> CniRequestError:
    return CniRequestError(
        f"network configuration: {msg}",
        "prevResult is the result of the plugin before nodemesh-cni in the config list",
        CniCode.INVALID_CONFIG,
        command=command,
        cni_version=version,
    )


def pod_ips_of(prev: object, command: str, version: str) -> tuple[PodIp, ...]:
    """Validates ``prevResult`` and returns the sandbox's addresses (no duplicates, in order).

    An address counts when its ``interface`` index names an interface with a ``sandbox`` (the
    pod's side), or when it has no index at all (results that list no interfaces).
    """
    if not isinstance(prev, dict):
        raise _result_error("prevResult is not an object", command, version)
    interfaces = prev.get("interfaces", [])
    if not isinstance(interfaces, list):
        raise _result_error("prevResult.interfaces is not a list", command, version)
    in_sandbox: list[bool] = []
    for i, iface in enumerate(interfaces):
        where = f"prevResult.interfaces[{i}]"
        if not isinstance(iface, dict):
            raise _result_error(f"{where} is not an object", command, version)
        if not isinstance(iface.get("name"), str) or not iface["name"]:
            raise _result_error(f"{where}.name is missing or empty", command, version)
        sandbox = iface.get("sandbox", "")
        if not isinstance(sandbox, str):
            raise _result_error(f"{where}.sandbox is not a string", command, version)
        in_sandbox.append(bool(sandbox))
    ips = prev.get("ips", [])
    if not isinstance(ips, list):
        raise _result_error("prevResult.ips is not a list", command, version)
    found: list[PodIp] = []
    for i, entry in enumerate(ips):
        where = f"prevResult.ips[{i}]"
        if not isinstance(entry, dict):
            raise _result_error(f"{where} is not an object", command, version)
        address = entry.get("address")
        if not isinstance(address, str):
            raise _result_error(f"{where}.address is missing or not a string", command, version)
        try:
            iface_addr = ipaddress.ip_interface(address)
        except ValueError as exc:
            raise _result_error(
                f"{where}.address {address[:60]!r} is not an address in CIDR notation",
                command,
                version,
            ) from exc
        if "/" not in address:
            raise _result_error(
                f"{where}.address {address[:60]!r} has no prefix length", command, version
            )
        if "version" in entry and entry["version"] != str(iface_addr.version):
            raise _result_error(
                f"{where}.version {entry['version']!r} does not match address {address}",
                command,
                version,
            )
        index = entry.get("interface")
        if index is None:
            pod_side = True
        elif isinstance(index, bool) or not isinstance(index, int):
            raise _result_error(f"{where}.interface is not an integer", command, version)
        elif not 0 <= index < len(in_sandbox):
            raise _result_error(
                f"{where}.interface {index} is out of range "
                f"(prevResult.interfaces has {len(in_sandbox)})",
                command,
                version,
            )
        else:
            pod_side = in_sandbox[index]
        if pod_side and iface_addr.ip not in found:
            found.append(iface_addr.ip)
    return tuple(found)


def _require(env: Mapping[str, str], key: str, command: str, version: str) -> str:
    value = env.get(key, "")
    if not value:
        raise CniRequestError(
            f"{key} is not set (required for {command})",
            code=CniCode.INVALID_ENV,
            command=command,
            cni_version=version,
        )
    return value


def _attachment(
    env: Mapping[str, str], command: str, version: str, net_name: str
) -> PodAttachment:
    container_id = _require(env, "CNI_CONTAINERID", command, version)
    if _CONTAINER_ID.fullmatch(container_id) is None:
        raise CniRequestError(
            f"CNI_CONTAINERID {container_id[:80]!r} is not a container ID (alphanumeric first, "
            "then alphanumerics, '_', '.', '-')",
            code=CniCode.INVALID_ENV,
            command=command,
            cni_version=version,
        )
    ifname = _require(env, "CNI_IFNAME", command, version)
    if (
        len(ifname) > 15
        or ifname in (".", "..")
        or any(c in ifname for c in "/:")
        or any(c.isspace() for c in ifname)
    ):
        raise CniRequestError(
            f"CNI_IFNAME {ifname[:40]!r} is not a Linux interface name",
            code=CniCode.INVALID_ENV,
            command=command,
            cni_version=version,
        )
    if command == Command.DEL.value:
        netns = env.get("CNI_NETNS", "")
    else:
        netns = _require(env, "CNI_NETNS", command, version)
    if netns and (not netns.startswith("/") or len(netns) > _MAX_PATH):
        raise CniRequestError(
            f"CNI_NETNS {netns[:80]!r} is not an absolute path",
            code=CniCode.INVALID_ENV,
            command=command,
            cni_version=version,
        )
    try:
        args = parse_cni_args(env.get("CNI_ARGS", ""))
    except CniRequestError as exc:
        exc.command, exc.cni_version = command, version
        raise
    for key, value in (("K8S_POD_NAMESPACE", args.pod_namespace), ("K8S_POD_NAME", args.pod_name)):
        if value is None:
            raise CniRequestError(
                f"CNI_ARGS has no {key}",
                "nodemesh-cni serves Kubernetes pods: the kubelet's runtime (containerd, "
                "CRI-O) passes K8S_POD_NAMESPACE and K8S_POD_NAME",
                CniCode.INVALID_ENV,
                command=command,
                cni_version=version,
            )
    assert args.pod_namespace is not None and args.pod_name is not None
    return PodAttachment(
        container_id=ContainerId(container_id),
        netns=netns,
        ifname=ifname,
        pod_namespace=args.pod_namespace,
        pod_name=args.pod_name,
        pod_uid=args.pod_uid,
        infra_container_id=args.infra_container_id,
        network_name=net_name,
        cni_version=version,
    )


class _AttachmentFields(TypedDict):
    container_id: ContainerId
    netns: str
    ifname: str
    pod_namespace: str
    pod_name: str
    pod_uid: PodUid | None
    infra_container_id: str | None
    network_name: str
    cni_version: str


def _fields(a: PodAttachment) -> _AttachmentFields:
    return _AttachmentFields(
        container_id=a.container_id,
        netns=a.netns,
        ifname=a.ifname,
        pod_namespace=a.pod_namespace,
        pod_name=a.pod_name,
        pod_uid=a.pod_uid,
        infra_container_id=a.infra_container_id,
        network_name=a.network_name,
        cni_version=a.cni_version,
    )


def parse_request(data: bytes) -> Envelope:
    """One request, validated: the frame, the CNI variables, the configuration."""
    env, body = split_frame(data)
    command_text = env.get("CNI_COMMAND", "")
    try:
        command = Command(command_text)
    except ValueError as exc:
        raise CniRequestError(
            f"CNI_COMMAND {command_text[:20]!r} is not one the agent serves",
            "the plugin relays ADD, DEL, CHECK and STATUS and answers VERSION and GC itself",
            CniCode.INVALID_ENV,
            command=command_text or None,
        ) from exc
    config = decode_config(body, command.value)
    version = config["cniVersion"]
    name = config["name"]
    if command is Command.STATUS:
        return Envelope(command, version, StatusRequest(name, version), None)
    base = _attachment(env, command.value, version, name)
    if command is Command.DEL:
        return Envelope(command, version, DelRequest(**_fields(base)), None)
    if command is Command.CHECK and version not in CHECK_VERSIONS:
        raise CniRequestError(
            f"CHECK is not defined for cniVersion {version}",
            code=CniCode.INCOMPATIBLE_VERSION,
            command=command.value,
            cni_version=version,
        )
    if "prevResult" not in config:
        raise CniRequestError(
            f"network configuration has no prevResult ({command.value} of a chained plugin)",
            "nodemesh-cni must come after the primary CNI plugin in the config list's plugins",
            CniCode.INVALID_CONFIG,
            command=command.value,
            cni_version=version,
        )
    prev = config["prevResult"]
    ips = pod_ips_of(prev, command.value, version)
    if command is Command.ADD:
        return Envelope(command, version, AddRequest(**_fields(base), pod_ips=ips), prev)
    return Envelope(command, version, CheckRequest(**_fields(base), pod_ips=ips), prev)


# --- output ----------------------------------------------------------------------------------


def response_frame(exit_code: int, stdout: bytes) -> bytes:
    if not 0 <= exit_code <= 255:
        raise ValueError(f"exit code {exit_code} out of range 0-255")
    return MAGIC + b" " + str(exit_code).encode() + b"\n" + stdout


def success_output(cni_version: str, prev_result: ResultWire) -> bytes:
    """The ADD result of a chained plugin that changes no interface: the prevResult, unchanged
    but labelled with the configuration's cniVersion."""
    out: dict[str, object] = {"cniVersion": cni_version}
    out.update((k, v) for k, v in prev_result.items() if k != "cniVersion")
    return json.dumps(out, separators=(",", ":")).encode() + b"\n"


def error_output(cni_version: str, code: int, msg: str, details: str = "") -> bytes:
    out: dict[str, object] = {"cniVersion": cni_version, "code": int(code), "msg": msg}
    if details:
        out["details"] = details
    return json.dumps(out, separators=(",", ":")).encode() + b"\n"
