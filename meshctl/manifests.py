"""``meshctl apply -f`` / ``delete -f``: multi-document YAML into the controller's config dir.

Parsing and validation are pure (:func:`parse`); every error names the file, the 0-based document
index and the field. :func:`apply` and :func:`delete` validate every document first and touch
the config dir only when all are valid (all-or-nothing); each file is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from controller import translate, yamlload
from meshapi.ids import is_dns_label, is_dns_subdomain
from meshctl import configdir
from meshctl.errors import ManifestError
from meshctl.local.objects import CLUSTER_SCOPED_KINDS, filename

CORE_KINDS: Final = frozenset({"Namespace", "Pod", "Service", "ServiceAccount"})
#: nodemesh CRD groups: their kinds pass through to the controller, which validates the specs
CRD_API_VERSIONS: Final = frozenset({"security.nodemesh.io/v1", "networking.nodemesh.io/v1"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """One validated document: where it came from and the file it maps to."""

    source: str
    index: int
    kind: str
    namespace: str | None
    name: str
    body: Mapping[str, object]

    @property
    def filename(self) -> str:
        return filename(self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind.lower()}/{where}{self.name}"


def _doc(source: str, index: int, doc: object) -> Manifest:
    def fail(field: str, message: str) -> ManifestError:
        return ManifestError(source, index, field, message)

    if not isinstance(doc, dict):
        raise fail("", f"expected a mapping (a Kubernetes object), got {type(doc).__name__}")
    api_version = doc.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        raise fail("apiVersion", "missing or not a string")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise fail("kind", "missing or not a string")
    if api_version == "v1":
        if kind not in CORE_KINDS:
            raise fail("kind", f"unknown kind {kind!r} for apiVersion v1 "
                               f"(known: {', '.join(sorted(CORE_KINDS))})")
    elif api_version not in CRD_API_VERSIONS:
        raise fail("apiVersion", f"unknown apiVersion {api_version!r} "
                                 f"(known: v1, {', '.join(sorted(CRD_API_VERSIONS))})")
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        raise fail("metadata", "missing or not a mapping")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise fail("metadata.name", "missing or not a string")
    if not is_dns_subdomain(name):
        raise fail("metadata.name", f"{name!r} is not a valid name (lowercase RFC 1123)")
    namespace: str | None = None
    if kind in CLUSTER_SCOPED_KINDS:
        if "namespace" in metadata:
            raise fail("metadata.namespace", f"{kind} is cluster-scoped and has no namespace")
        if not is_dns_label(name):
            raise fail("metadata.name", f"{name!r} is not a valid namespace name")
    else:
        ns = metadata.get("namespace", "default")
        if not isinstance(ns, str) or not is_dns_label(ns):
            raise fail("metadata.namespace", f"{ns!r} is not a valid namespace name")
        namespace = ns
    for key in ("labels", "annotations"):
        value = metadata.get(key)
        if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise fail(f"metadata.{key}", "must be a mapping of strings to strings")
    if "spec" in doc and not isinstance(doc["spec"], dict):
        raise fail("spec", "must be a mapping")
    if api_version == "v1" or kind in translate.API_VERSIONS:
        # the controller's own validation, so `apply` refuses what the controller would reject
        try:
            translate.parse_object(translate.SourceObject(source, index, doc))
        except translate.ObjectError as exc:
            raise fail(exc.issue.field, exc.issue.message) from None
    return Manifest(source, index, kind, namespace, name, doc)


def parse(text: str, source: str) -> list[Manifest]:
    """Every non-empty document of ``text``, validated; raises on the first invalid one."""
    try:
        docs = yamlload.load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestError(source, None, "", f"not valid YAML{at}: {exc}") from exc
    out = [_doc(source, i, d) for i, d in enumerate(docs) if d is not None]
    seen: dict[str, int] = {}
    for m in out:
        if m.filename in seen:
            raise ManifestError(source, m.index, "metadata.name",
                                f"{m} is also defined by document {seen[m.filename]}")
        seen[m.filename] = m.index
    if not out:
        raise ManifestError(source, None, "", "contains no objects")
    return out


def read(path: str) -> list[Manifest]:
    try:
        if path != "-" and (size := Path(path).stat().st_size) > yamlload.MAX_YAML_BYTES:
            raise ManifestError(path, None, "", f"is {size} bytes, more than the "
                                f"{yamlload.MAX_YAML_BYTES} accepted; split it into several files")
        text = Path(path).read_text() if path != "-" else _stdin()
    except OSError as exc:
        raise ManifestError(path, None, "", f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(path, None, "", "is not UTF-8 text") from exc
    return parse(text, path)


def _stdin() -> str:
    import sys

    # one character more than accepted: parse() then refuses it with the size in the message
    return sys.stdin.read(yamlload.MAX_YAML_BYTES + 1)


def apply(paths: list[str], config_dir: Path) -> list[Manifest]:
    manifests = [m for p in paths for m in read(p)]  # all validated before any write
    configdir.write(config_dir, ((m.filename, m.body) for m in manifests))
    return manifests


def delete(paths: list[str], config_dir: Path) -> tuple[list[Manifest], list[Manifest]]:
    """Returns (deleted, not found)."""
    manifests = [m for p in paths for m in read(p)]
    missing = set(configdir.remove(config_dir, [m.filename for m in manifests]))
    return (
        [m for m in manifests if m.filename not in missing],
        [m for m in manifests if m.filename in missing],
    )
