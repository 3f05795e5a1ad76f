"""The local-directory config source: Kubernetes-shaped YAML files in ``--config-dir``, watched.

The directory is rescanned as soon as inotify reports a change in it (``controller.dirwatch``;
every ``rescan_interval`` seconds as a safety net, or every ``poll_interval`` seconds where
inotify is unavailable), on a cheap signature per file (name, mtime_ns, size, inode); only files
whose signature changed are re-read and re-parsed, and translation runs only when something
changed. ``*.yaml``/``*.yml`` files (hidden ones ignored),
multi-document. A file that cannot be read or parsed keeps the last good version of all its
objects in force; see :mod:`controller.translate` for per-object rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller import yamlload
from controller.dirwatch import DirWatch, WatchUnavailable, open_watch
from controller.metrics import Metrics
from controller.source import IssueLog
from controller.translate import (
    Accepted,
    ConfigIssue,
    ObjectKey,
    SourceObject,
    Translation,
    translate,
)
from meshapi.constants import DEFAULT_ROOT_NAMESPACE

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")
Signature = tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class FileContent:
    signature: Signature
    objects: tuple[SourceObject, ...]
    #: set when the file could not be read or parsed: its last good objects stay
    issue: ConfigIssue | None


def load_documents(source: str, text: str) -> FileContent:
    """Parse a multi-document YAML text (the signature is filled in by the caller)."""
    try:
        docs = yamlload.load_all(text)  # SafeLoader, bounded: no objects, no alias bombs
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return FileContent(
            ("", 0, 0, 0),
            (),
            ConfigIssue(
                source, line, "", f"malformed YAML: {problem}; nothing in this file was applied"
            ),
        )
    objects = tuple(SourceObject(source, i, doc) for i, doc in enumerate(docs) if doc is not None)
    return FileContent(("", 0, 0, 0), objects, None)


class LocalSource:
    """Watches one directory and hands every new :class:`Translation` to ``on_change``."""

    def __init__(
        self,
        directory: Path,
        trust_domain: str,
        on_change: Callable[[Translation], None],
        metrics: Metrics,
        poll_interval: float = 0.25,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        rescan_interval: float = 5.0,
    ) -> None:
        self._dir = directory
        self._root_namespace = root_namespace
        self._trust_domain = trust_domain
        self._on_change = on_change
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._rescan_interval = rescan_interval
        self._files: dict[str, FileContent] = {}
        self._dir_issue: ConfigIssue | None = None
        self._last_good: dict[ObjectKey, Accepted] = {}
        self._issues = IssueLog(metrics)
        self._signatures: frozenset[Signature] | None = None
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def errors(self) -> tuple[ConfigIssue, ...]:
        return self._issues.errors

    @property
    def warnings(self) -> tuple[ConfigIssue, ...]:
        return self._issues.warnings

    def status(self) -> Mapping[str, Any]:
        return {"source": "local", "configDir": str(self._dir), "files": len(self._files)}

    def _scan(self) -> dict[str, Signature]:
        sigs: dict[str, Signature] = {}
        with os.scandir(self._dir) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.name.endswith(SUFFIXES):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # removed between listing and stat; the next poll sees it
                sigs[entry.path] = (entry.name, st.st_mtime_ns, st.st_size, st.st_ino)
        return sigs

    def poll_once(self) -> bool:
        """Re-read what changed; True if a new translation was produced."""
        try:
            sigs = self._scan()
            dir_issue = None
        except OSError as exc:
            sigs = {}
            dir_issue = ConfigIssue(
                str(self._dir),
                "",
                "",
                f"cannot list the config dir: {exc.strerror or exc}; last good configuration kept",
            )
        fingerprint = frozenset(sigs.values())
        if fingerprint == self._signatures and dir_issue == self._dir_issue:
            return False
        self._signatures = fingerprint
        self._dir_issue = dir_issue
        if dir_issue is None:
            files: dict[str, FileContent] = {}
            for path, sig in sigs.items():
                old = self._files.get(path)
                files[path] = (
                    old if old is not None and old.signature == sig else (self._read(path, sig))
                )
            self._files = files
        self._translate()
        return True

    def _read(self, path: str, sig: Signature) -> FileContent:
        if sig[2] > yamlload.MAX_YAML_BYTES:  # refused before it is read into memory
            return FileContent(sig, (), ConfigIssue(
                path, "", "",
                f"file is {sig[2]} bytes, more than the {yamlload.MAX_YAML_BYTES} accepted; "
                "nothing in this file was applied (split it into several files)",
            ))
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return FileContent(sig, (), ConfigIssue(path, "", "", f"cannot read: {exc}"))
        content = load_documents(path, text)
        return FileContent(sig, content.objects, content.issue)

    def _translate(self) -> None:
        objects = [o for path in sorted(self._files) for o in self._files[path].objects]
        stale = {p for p, f in self._files.items() if f.issue is not None}
        if self._dir_issue is not None:
            stale |= {a.source for a in self._last_good.values()}
        result = translate(
            objects,
            trust_domain=self._trust_domain,
            last_good=self._last_good,
            stale_sources=stale,
            root_namespace=self._root_namespace,
        )
        file_issues = [f.issue for f in self._files.values() if f.issue is not None]
        if self._dir_issue is not None:
            file_issues.append(self._dir_issue)
        errors = tuple(sorted(set(result.errors) | set(file_issues)))
        self._last_good = result.accepted
        self._issues.report(errors, result.warnings)
        self._loaded = True
        self._on_change(
            Translation(
                result.workloads,
                result.services,
                errors,
                result.accepted,
                result.authorization_policies,
                result.peer_authentications,
                result.warnings,
                result.scheduled,
            )
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Rescan on every change inotify reports (and every ``rescan_interval`` as a safety
        net), or every ``poll_interval`` where inotify is unavailable, until ``stop`` is set."""
        try:
            watch: DirWatch | None = open_watch(self._dir)
        except WatchUnavailable as exc:
            log.warning("watching %s with inotify failed (%s); polling every %.2f s instead",
                        self._dir, exc, self._poll_interval)
            watch = None
        if watch is None:
            while not stop.is_set():
                self.poll_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll_interval)
            return
        stopper = asyncio.create_task(stop.wait(), name="localsource-stop")
        stopper.add_done_callback(lambda _: watch.wake())
        try:
            while not stop.is_set():
                self.poll_once()
                await watch.wait(self._rescan_interval)
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
            watch.close()
