"""Installs the nodemesh-cni binary and chains it into the node's primary CNI configuration.

The container runtime (containerd, CRI-O) uses exactly one CNI configuration: the first file,
in lexical order, of ``*.conf``, ``*.conflist`` and ``*.json`` in the CNI config directory. A
chained plugin therefore has to be an entry of *that* file's ``plugins`` list: nodemesh appends
``{"type": "nodemesh-cni", "socket": ...}`` as the last plugin (after the primary CNI has set
up the pod's interface and address, whose result it receives as ``prevResult``). ``"socket"``
is informational: the plugin connects to its built-in default, which the agent serves, unless
``NODEMESH_CNI_SOCKET`` says otherwise.

A single-plugin ``NAME.conf`` (or ``NAME.json``) has no ``plugins`` list to append to, so it is
converted, as other chained CNIs (Istio's, Cilium's chaining mode) do: ``NAME.conflist`` is
written with ``{"cniVersion", "name", "plugins": [<the original object, unchanged>, ours]}``,
then ``NAME.conf`` is removed. Keeping the stem keeps the file's place in the lexical order;
should the primary CNI write its ``NAME.conf`` again, that file sorts before ``NAME.conflist``,
becomes primary again and the next check converts it again.

Invariants:

* Planning is pure (:func:`select_primary`, :func:`plan_install`, :func:`plan_uninstall`): file
  name and bytes in, a :class:`Keep`, :class:`Rewrite` or :class:`Reject` out. Applying a plan
  is the only I/O, in :class:`CniInstaller`.
* Apart from our entry, a rewritten file is the same JSON (same keys, order and values).
* Every write is atomic: a temporary file in the same directory (named so that no runtime takes
  it for a configuration), fsync, rename. A file that changed since it was read is not replaced;
  the next check plans again.
* A configuration that cannot be parsed, or whose ``cniVersion`` the plugin cannot serve, is
  reported and never rewritten.
* Uninstalling removes our entry from every configuration that has one (never converting back:
  the list stays a valid conflist) and the binary. Pods keep working, unmeshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from node_agent.cni import protocol
from node_agent.cni.errors import CniInstallError
from node_agent.cni.server import DEFAULT_SOCKET

log = logging.getLogger(__name__)

PLUGIN_TYPE: Final = "nodemesh-cni"
CONFIG_EXTENSIONS: Final = (".conf", ".conflist", ".json")
DEFAULT_CHECK_INTERVAL: Final = 2.0


# --- pure planning ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keep:
    """The file is already as it should be."""

    name: str


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Write ``content`` to ``name`` (atomically), then remove ``remove`` if set."""

    name: str
    content: bytes
    remove: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """The file cannot be changed safely: ``reason`` says why and what to check."""

    name: str
    reason: str


ConfigPlan = Keep | Rewrite | Reject


def plugin_entry(socket_path: str = DEFAULT_SOCKET) -> dict[str, object]:
    return {"type": PLUGIN_TYPE, "socket": socket_path}


def select_primary(names: Iterable[str]) -> str | None:
    """The configuration file the runtime uses: the first CNI config file in lexical order."""
    candidates = sorted(n for n in names if n.endswith(CONFIG_EXTENSIONS))
    return candidates[0] if candidates else None


def _dump(obj: object) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n"


def _load(name: str, content: bytes) -> dict[str, object] | Reject:
    try:
        obj = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Reject(name, f"{name} is not valid JSON ({exc}); fix or remove it")
    if not isinstance(obj, dict):
        return Reject(name, f"{name} is a JSON {type(obj).__name__}, not an object")
    return obj


def _check_versions(name: str, obj: Mapping[str, object]) -> Reject | None:
    version = obj.get("cniVersion")
    if not isinstance(version, str):
        return Reject(name, f"{name}: cniVersion is missing or not a string")
    versions = [version]
    extra = obj.get("cniVersions")
    if extra is not None:
        if not isinstance(extra, list) or not all(isinstance(v, str) for v in extra):
            return Reject(name, f"{name}: cniVersions is not a list of strings")
        versions += extra
    for v in versions:
        if v not in protocol.SUPPORTED_VERSIONS:
            return Reject(
                name,
                f"{name}: cniVersion {v} is not supported by nodemesh-cni (it supports "
                f"{', '.join(protocol.SUPPORTED_VERSIONS)}); pods on this node stay unmeshed",
            )
    return None


def _plugins(name: str, obj: Mapping[str, object]) -> list[dict[str, object]] | Reject:
    plugins = obj.get("plugins")
    if not isinstance(plugins, list):
        return Reject(name, f"{name}: plugins is not a list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            return Reject(name, f"{name}: plugins[{i}] is not an object with a type")
    return plugins


def plan_install(name: str, content: bytes, entry: Mapping[str, object]) -> ConfigPlan:
    """Our entry as the last plugin of the primary configuration ``name``."""
    obj = _load(name, content)
    if isinstance(obj, Reject):
        return obj
    if name.endswith(".conflist"):
        if (bad := _check_versions(name, obj)) is not None:
            return bad
        plugins = _plugins(name, obj)
        if isinstance(plugins, Reject):
            return plugins
        others = [p for p in plugins if p.get("type") != PLUGIN_TYPE]
        if not others:
            return Reject(
                name,
                f"{name} has no plugin but nodemesh-cni; the primary CNI (flannel, calico, ...) "
                "must be installed first",
            )
        if plugins[-1] == dict(entry) and len(others) == len(plugins) - 1:
            return Keep(name)
        new = {k: ([*others, dict(entry)] if k == "plugins" else v) for k, v in obj.items()}
        return Rewrite(name, _dump(new))
    # a single-plugin .conf or .json: what the runtime reads as one plugin
    if "plugins" in obj:
        return Reject(
            name,
            f"{name} holds a plugins list, but runtimes read {os.path.splitext(name)[1]} files "
            "as a single plugin; rename it to .conflist",
        )
    if not isinstance(obj.get("type"), str) or not obj["type"]:
        return Reject(name, f"{name}: type is missing; this is not a CNI network configuration")
    if obj["type"] == PLUGIN_TYPE:
        return Reject(name, f"{name} configures nodemesh-cni alone; it needs a primary CNI")
    if not isinstance(obj.get("name"), str):
        return Reject(name, f"{name}: name is missing or not a string")
    if (bad := _check_versions(name, obj)) is not None:
        return bad
    target = os.path.splitext(name)[0] + ".conflist"
    converted = {
        "cniVersion": obj["cniVersion"],
        "name": obj["name"],
        "plugins": [obj, dict(entry)],
    }
    return Rewrite(target, _dump(converted), remove=name)


def plan_uninstall(name: str, content: bytes) -> ConfigPlan:
    """``name`` without our entries (a file we never touched is kept as it is)."""
    obj = _load(name, content)
    if isinstance(obj, Reject):
        return obj
    plugins = obj.get("plugins")
    if not isinstance(plugins, list):
        return Keep(name)
    kept = [p for p in plugins if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    if len(kept) == len(plugins):
        return Keep(name)
    new = {k: (kept if k == "plugins" else v) for k, v in obj.items()}
    return Rewrite(name, _dump(new))


# --- applying --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Installed:
    path: str
    changed: bool


@dataclass(frozen=True, slots=True)
class Waiting:
    """No CNI configuration yet: the primary CNI is not installed (or is being re-installed)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    path: str
    reason: str


Outcome = Installed | Waiting | Refused


@dataclass(frozen=True, slots=True)
class UninstallReport:
    changed: tuple[str, ...]  # config files our entry was removed from
    refused: tuple[Refused, ...]  # config files that could not be read
    binary_removed: bool


@dataclass(slots=True)
class _Snapshot:
    content: bytes
    stat: tuple[int, int, int] = field(default=(0, 0, 0))  # (st_ino, st_size, st_mtime_ns)


class CniInstaller:
    """Keeps nodemesh-cni installed: the binary in ``cni_bin_dir``, the entry in the primary
    configuration of ``cni_conf_dir``. :meth:`run` re-checks every ``interval`` seconds, since
    primary CNIs rewrite their configuration (and drop our entry) when they restart."""

    def __init__(
        self,
        *,
        plugin_binary: str,
        cni_bin_dir: str,
        cni_conf_dir: str,
        socket_path: str = DEFAULT_SOCKET,
        interval: float = DEFAULT_CHECK_INTERVAL,
    ) -> None:
        self.plugin_binary = plugin_binary
        self.cni_bin_dir = cni_bin_dir
        self.cni_conf_dir = cni_conf_dir
        self.interval = interval
        self.entry = plugin_entry(socket_path)
        self.installed = asyncio.Event()
        self._source: bytes | None = None  # the binary does not change under a running agent
        self._last_outcome: Outcome | None = None

    @property
    def binary_path(self) -> str:
        return os.path.join(self.cni_bin_dir, PLUGIN_TYPE)

    # --- binary ----------------------------------------------------------------------------

    def install_binary(self) -> bool:
        """Copy the plugin into the CNI bin directory unless it is already there; True if copied."""
        if self._source is None:
            try:
                with open(self.plugin_binary, "rb") as f:
                    self._source = f.read()
            except OSError as exc:
                raise CniInstallError(
                    f"cannot read the plugin binary {self.plugin_binary}: {exc}; is it in the "
                    "image (make -C cni)?"
                ) from exc
        data = self._source
        digest = hashlib.sha256(data).hexdigest()
        with contextlib.suppress(OSError):
            with open(self.binary_path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() == digest:
                    if os.stat(self.binary_path).st_mode & 0o777 == 0o755:
                        return False
        try:
            _atomic_write(self.cni_bin_dir, PLUGIN_TYPE, data, 0o755)
        except OSError as exc:
            raise CniInstallError(
                f"cannot install {self.binary_path}: {exc}; is the CNI bin directory "
                "(--cni-bin-dir) mounted writable?"
            ) from exc
        log.info("installed the CNI plugin binary %s", self.binary_path)
        return True

    def remove_binary(self) -> bool:
        try:
            os.unlink(self.binary_path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise CniInstallError(f"cannot remove {self.binary_path}: {exc}") from exc
        return True

    # --- configuration ---------------------------------------------------------------------

    def _list(self) -> list[str]:
        try:
            return [
                e.name
                for e in os.scandir(self.cni_conf_dir)
                if e.name.endswith(CONFIG_EXTENSIONS) and not e.is_dir()
            ]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CniInstallError(
                f"cannot list the CNI config directory {self.cni_conf_dir}: {exc}"
            ) from exc

    def _read(self, name: str) -> _Snapshot:
        path = os.path.join(self.cni_conf_dir, name)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return _Snapshot(f.read(), (st.st_ino, st.st_size, st.st_mtime_ns))

    def _unchanged(self, name: str, snap: _Snapshot) -> bool:
        try:
            st = os.stat(os.path.join(self.cni_conf_dir, name))
        except FileNotFoundError:
            return False
        return (st.st_ino, st.st_size, st.st_mtime_ns) == snap.stat

    def _apply(self, plan: Rewrite, source: str, snap: _Snapshot) -> bool:
        """Write ``plan`` unless ``source`` changed since it was read; True if written."""
        if not self._unchanged(source, snap):
            log.info("%s changed while planning; checking again", source)
            return False
        mode = 0o644
        with contextlib.suppress(OSError):
            mode = os.stat(os.path.join(self.cni_conf_dir, source)).st_mode & 0o777
        _atomic_write(self.cni_conf_dir, plan.name, plan.content, mode)
        if plan.remove is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.cni_conf_dir, plan.remove))
        return True

    def ensure_config(self) -> Outcome:
        """One check: our entry in the primary configuration, added if it is missing."""
        primary = select_primary(self._list())
        if primary is None:
            return Waiting(f"no CNI configuration in {self.cni_conf_dir} yet")
        path = os.path.join(self.cni_conf_dir, primary)
        try:
            snap = self._read(primary)
        except FileNotFoundError:
            return Waiting(f"{path} vanished while being read")
        except OSError as exc:
            return Refused(path, f"cannot read {path}: {exc}")
        plan = plan_install(primary, snap.content, self.entry)
        if isinstance(plan, Keep):
            return Installed(path, changed=False)
        if isinstance(plan, Reject):
            return Refused(path, plan.reason)
        try:
            written = self._apply(plan, primary, snap)
        except OSError as exc:
            return Refused(path, f"cannot write {plan.name} in {self.cni_conf_dir}: {exc}")
        if not written:
            return Waiting(f"{path} changed while it was being updated")
        return Installed(os.path.join(self.cni_conf_dir, plan.name), changed=True)

    def check(self) -> Outcome:
        """Binary and configuration, once (blocking file I/O: run it in a worker thread)."""
        self.install_binary()
        return self.ensure_config()

    async def run(self, stop: asyncio.Event) -> None:
        """Install, then keep installed until ``stop`` is set. ``installed`` is set while our
        entry is in the primary configuration. Does not uninstall: call :meth:`uninstall`."""
        while not stop.is_set():
            try:
                outcome: Outcome = await asyncio.to_thread(self.check)
            except CniInstallError as exc:
                outcome = Refused(self.cni_bin_dir, str(exc))
            self._report(outcome)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await stop.wait()
        self.installed.clear()

    def _report(self, outcome: Outcome) -> None:
        if isinstance(outcome, Installed):
            self.installed.set()
            if outcome.changed:
                log.info("chained nodemesh-cni into %s", outcome.path)
        else:
            self.installed.clear()
        if outcome != self._last_outcome and not isinstance(outcome, Installed):
            if isinstance(outcome, Waiting):
                log.info(
                    "CNI plugin not chained yet: %s; checking every %.0f s",
                    outcome.reason,
                    self.interval,
                )
            else:
                log.error("CNI plugin not chained: %s", outcome.reason)
        self._last_outcome = outcome

    def uninstall(self) -> UninstallReport:
        """Remove our entry from every configuration and the binary. Blocking file I/O."""
        changed: list[str] = []
        refused: list[Refused] = []
        for name in sorted(self._list()):
            path = os.path.join(self.cni_conf_dir, name)
            try:
                snap = self._read(name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                refused.append(Refused(path, f"cannot read {path}: {exc}"))
                continue
            plan = plan_uninstall(name, snap.content)
            if isinstance(plan, Reject):
                # not ours to judge: the runtime skips or reports it; we only note it
                if PLUGIN_TYPE.encode() in snap.content:
                    refused.append(Refused(path, plan.reason))
                continue
            if isinstance(plan, Rewrite):
                try:
                    if self._apply(plan, name, snap):
                        changed.append(path)
                    else:
                        refused.append(Refused(path, f"{path} changed while being updated"))
                except OSError as exc:
                    refused.append(Refused(path, f"cannot write {path}: {exc}"))
        binary_removed = self.remove_binary()
        for path in changed:
            log.info("removed nodemesh-cni from %s", path)
        for r in refused:
            log.error("could not remove nodemesh-cni from %s: %s", r.path, r.reason)
        self.installed.clear()
        return UninstallReport(tuple(changed), tuple(refused), binary_removed)


def _atomic_write(directory: str, name: str, data: bytes, mode: int) -> None:
    # The temporary name has no CNI config extension: a runtime listing the directory meanwhile
    # must not take it for a configuration (or a plugin).
    tmp = os.path.join(directory, f".{name}.nodemesh-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
