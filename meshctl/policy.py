"""``meshctl policy validate`` and ``meshctl policy explain`` (issue 4).

``validate`` runs the controller's own parser (:func:`controller.translate.parse_object`) on every
document of every file and reports every invalid object with file, line, object and field path;
lines come from the YAML node tree (``yaml.compose_all``), so a field path such as
``spec.rules[0].from[0].source.ipBlocks[1]`` points at the line of that value.

``explain`` evaluates a request with :func:`meshapi.policy.evaluate` — the code the ztunnel runs —
against the configuration in force, read from the controller's ``GET /debug/config`` (a
discovery snapshot in meshapi wire JSON). The path and host are normalized as the ztunnel does
(:mod:`meshapi.httppath`, the snapshot's ``pathNormalization``; query left out), so what is
explained is what the ztunnel matches; a path the ztunnel would refuse (400) is an error here.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller import translate, yamlload
from meshapi import discovery
from meshapi.constants import CONTROLLER_METRICS_PORT
from meshapi.errors import IdentityError, MeshApiError
from meshapi.httppath import ambiguous_method, normalize_host, normalize_path, split_query
from meshapi.ids import SpiffeId
from meshapi.model import Workload
from meshapi.policy import (
    Attributes,
    Decision,
    HttpRequest,
    evaluate,
    is_http_port,
    l7_warnings,
)
from meshctl.errors import MeshctlError

DEFAULT_CONTROLLER = f"http://10.77.0.1:{CONTROLLER_METRICS_PORT}"

_TOKEN = re.compile(r"\[([^\]]*)\]|([^.\[\]]+)")


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None
    object: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        parts = [where, self.object, self.field]
        return ": ".join(p for p in parts if p) + f": {self.message}"


def field_line(node: yaml.Node | None, path: str) -> int | None:
    """1-based line of the node at ``path`` (or of its deepest existing ancestor)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for m in _TOKEN.finditer(path):
        key = m.group(1) if m.group(1) is not None else m.group(2)
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == key:
                    # an unknown field is reported at its key
                    nxt = v if m.end() < len(path) else k
                    break
        elif isinstance(node, yaml.SequenceNode) and key.isdigit():
            items = node.value
            nxt = items[int(key)] if int(key) < len(items) else None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def validate_text(
    text: str, source: str, live: discovery.Snapshot | None = None
) -> list[Problem]:
    """Every invalid object of ``text``; with ``live`` (the configuration in force), also every
    L7 attribute that cannot apply on the ports of the workloads a policy selects."""
    try:
        nodes = yamlload.compose_all(text)
        docs = yamlload.load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [Problem(source, mark.line + 1 if mark is not None else None, "", "",
                        f"malformed YAML: {getattr(exc, 'problem', None) or exc}")]
    problems: list[Problem] = []
    for index, (node, doc) in enumerate(zip(nodes, docs, strict=True)):
        if doc is None:
            continue
        parsed, errors = _parse_collecting(source, index, doc)
        found = [Problem(source, field_line(node, issue.field), issue.object, issue.field,
                         issue.message) for issue in errors]
        problems.extend(sorted(found, key=lambda p: p.line or 0))
        if parsed is None:
            continue
        if live is not None and isinstance(parsed, translate.AuthzObj):
            for path, message in l7_warnings(
                parsed.policy, live.workloads, live.services, live.root_namespace
            ):
                problems.append(Problem(source, field_line(node, path), str(parsed.key), path,
                                        message.removeprefix("warning: ")))
    return problems


#: bound on the errors reported for one object
MAX_ERRORS_PER_OBJECT = 50


def _parse_collecting(
    source: str, index: int, doc: object
) -> tuple[translate.Parsed | None, list[translate.ConfigIssue]]:
    """The parser stops at an object's first error; to report every one, the offending field
    is removed from a copy and the object parsed again, until it passes or an error cannot be
    removed (its path is a whole required field, or repeats)."""
    body = copy.deepcopy(doc)
    errors: list[translate.ConfigIssue] = []
    seen: set[str] = set()
    while len(errors) < MAX_ERRORS_PER_OBJECT:
        try:
            parsed = translate.parse_object(translate.SourceObject(source, index, body))
        except translate.ObjectError as exc:
            issue = exc.issue
            errors.append(issue)
            if not issue.field or issue.field in seen or not _remove(body, issue.field):
                return None, errors
            seen.add(issue.field)
            continue
        return (parsed if not errors else None), errors
    return None, errors


def _remove(body: object, path: str) -> bool:
    """Delete the value at ``path`` (``a.b[0].c``) in place; False if there is none."""
    keys = [m.group(1) if m.group(1) is not None else m.group(2) for m in _TOKEN.finditer(path)]
    chain: list[Any] = [body]
    for key in keys[:-1]:
        cur = chain[-1]
        if isinstance(cur, dict) and key in cur:
            chain.append(cur[key])
        elif isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
            chain.append(cur[int(key)])
        else:
            return False
    cur, last = chain[-1], (keys[-1] if keys else "")
    if isinstance(cur, dict) and last in cur and last not in ("apiVersion", "kind", "metadata"):
        del cur[last]
    elif isinstance(cur, list) and last.isdigit() and int(last) < len(cur):
        del cur[int(last)]
        if not cur and len(chain) >= 2 and isinstance(chain[-2], dict):
            # an emptied list is an error of its own ("must not be empty"): drop it too
            chain[-2].pop(keys[-2], None)
    else:
        return False
    return True


def validate(paths: Sequence[str], live: discovery.Snapshot | None = None) -> list[Problem]:
    problems: list[Problem] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(path, None, "", "", f"cannot read: {exc}"))
            continue
        problems.extend(validate_text(text, path, live))
    return problems


# ---- explain ---------------------------------------------------------------------------------


def fetch_config(controller: str, timeout: float = 5.0) -> discovery.Snapshot:
    url = controller.rstrip("/") + "/debug/config"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (operator URL)
            raw: Any = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MeshctlError(f"cannot read the live configuration from {url}: {exc} — is the "
                           "controller running (`meshctl local up`)?") from exc
    try:
        message = discovery.decode(raw)
    except MeshApiError as exc:
        raise MeshctlError(f"{url} answered an invalid configuration: {exc}") from exc
    if not isinstance(message, discovery.Snapshot):
        raise MeshctlError(f"{url} did not answer a snapshot")
    return message


def _find_pod(snapshot: discovery.Snapshot, name: str) -> Workload:
    namespace, sep, pod = name.rpartition("/")
    found = [w for w in snapshot.workloads
             if w.name == pod and (not sep or w.namespace == namespace)]
    if not found:
        raise MeshctlError(f"no pod {name!r} in the live configuration")
    if len(found) > 1:
        raise MeshctlError(f"pod name {name!r} is ambiguous; use NAMESPACE/POD")
    return found[0]


@dataclass(frozen=True, slots=True)
class Explained:
    target: Workload
    port: int
    attributes: Attributes
    decision: Decision


def explain(
    snapshot: discovery.Snapshot,
    *,
    source: str,
    to: str,
    method: str | None = None,
    path: str | None = None,
    headers: Sequence[str] = (),
    trust_domain: str = "cluster.local",
    root_namespace: str | None = None,
) -> Explained:
    root = snapshot.root_namespace if root_namespace is None else root_namespace
    pod_name, _, port_text = to.partition(":")
    target = _find_pod(snapshot, pod_name)
    services = snapshot.services
    if port_text:
        if not port_text.isdigit():
            raise MeshctlError(f"--to {to!r}: port must be a number")
        port = int(port_text)
    else:
        ports = sorted({p.target_port for s in services if any(e.uid == target.uid
                                                               for e in s.endpoints)
                        for p in s.ports})
        if not ports:
            raise MeshctlError(f"--to {to!r}: no Service port maps to this pod; give POD:PORT")
        port = ports[0]
    peer: SpiffeId | None
    try:
        src_ip = ipaddress.IPv4Address(source)
        by_ip = {w.ip: w for w in snapshot.workloads}
        src_w = by_ip.get(src_ip)
        peer = src_w.identity if src_w is not None and src_w.enrolled else None
    except ValueError:
        namespace, sep, sa = source.partition("/")
        if not sep:
            raise MeshctlError(f"--from {source!r}: expected NAMESPACE/SERVICEACCOUNT or an IP")\
                from None
        try:
            peer = SpiffeId(trust_domain, namespace, sa)
        except IdentityError as exc:
            raise MeshctlError(f"--from {source!r}: {exc}") from None
        match = [w for w in snapshot.workloads if w.identity == peer]
        src_ip = match[0].ip if match else ipaddress.IPv4Address("0.0.0.0")
    http = is_http_port(services, target.uid, port)
    request = None
    if http and (method or path or headers):
        pairs: list[tuple[str, str]] = []
        for h in headers:
            k, sep, v = h.partition("=")
            if not sep:
                raise MeshctlError(f"--header {h!r}: expected K=V")
            pairs.append((k.strip().lower(), v))
        host = next((v for k, v in pairs if k == "host"), f"{target.ip}:{port}")
        mode = snapshot.path_normalization
        raw_path, _ = split_query(path or "/")
        matched = normalize_path(raw_path, mode)
        if matched is None:
            raise MeshctlError(f"--path {path!r}: the ztunnel refuses this path with 400 before "
                               f"any policy (pathNormalization {mode.value}: an encoded '/' or "
                               "'\\', or a bad %-encoding)")
        verb = method or "GET"
        if ambiguous_method(verb):
            raise MeshctlError(f"--method {verb!r}: the ztunnel refuses a standard method in "
                               f"another case with 400 (methods are case-sensitive; "
                               f"{verb.upper()!r}?)")
        request = HttpRequest(verb, matched, normalize_host(host), tuple(pairs))
    attrs = Attributes(src_ip, target.ip, port, peer=peer, http_port=http, request=request)
    decision = evaluate(snapshot.authorization_policies, namespace=target.namespace,
                        labels=target.label_map, attributes=attrs, root_namespace=root)
    return Explained(target, port, attrs, decision)


def render(e: Explained) -> str:
    d = e.decision
    lines = [
        f"{'ALLOW' if d.allowed else 'DENY'}: {d.reason}",
        f"  to: {e.target.namespace}/{e.target.name} {e.target.ip}:{e.port} "
        f"({'HTTP' if e.attributes.http_port else 'TCP'} port)",
        f"  from: {e.attributes.principal or '(no mTLS identity)'} {e.attributes.source_ip}",
    ]
    if e.attributes.request is not None:
        r = e.attributes.request
        lines.append(f"  request: {r.method} {r.path} host={r.host}")
    if d.deciding is not None:
        lines.append(f"  policy: {d.deciding.policy} rule: rules[{d.deciding.rule}] "
                     f"({d.deciding.action.value})")
    if d.needs_request:
        lines.append("  note: L7 rules apply; each request is decided again "
                     "(give --method/--path/--header)")
    for a in d.audits:
        lines.append(f"  audit: {a}")
    if d.dry_run is not None:
        lines.append(f"  dry-run ({', '.join(d.dry_run.policies)}): would "
                     f"{'allow' if d.dry_run.allowed else 'deny'}"
                     + (f" by {d.dry_run.deciding}" if d.dry_run.deciding else ""))
    for w in d.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (operator URL)
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MeshctlError(f"cannot read {url}: {exc} — is the controller running?") from exc
