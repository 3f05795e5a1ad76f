"""The installer: planning tables (pure), then the real thing on temporary directories."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from node_agent.cni.errors import CniInstallError
from node_agent.cni.install import (
    CniInstaller,
    Installed,
    Keep,
    Refused,
    Reject,
    Rewrite,
    Waiting,
    plan_install,
    plan_uninstall,
    plugin_entry,
    select_primary,
)

ENTRY = plugin_entry("/var/run/nodemesh/cni.sock")

FLANNEL: dict[str, Any] = {
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
BRIDGE_CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "mynet",
    "type": "bridge",
    "bridge": "cni0",
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/16"}]], "mtu": 1.5e3},
}


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


def with_plugins(base: dict[str, Any], *plugins: dict[str, Any]) -> dict[str, Any]:
    return {**base, "plugins": list(plugins)}


OURS_OLD_SOCKET = {"type": "nodemesh-cni", "socket": "/old.sock"}


INSTALL_TABLE: list[tuple[str, str, bytes, Any]] = [
    # id, file name, content, expected: Keep | (new name, new JSON, removed) | reject substring
    (
        "append to conflist",
        "10-flannel.conflist",
        dumps(FLANNEL),
        ("10-flannel.conflist", with_plugins(FLANNEL, *FLANNEL["plugins"], ENTRY), None),
    ),
    (
        "already last",
        "10-flannel.conflist",
        dumps(with_plugins(FLANNEL, *FLANNEL["plugins"], ENTRY)),
        Keep("10-flannel.conflist"),
    ),
    (
        "moved to the end",
        "10-flannel.conflist",
        dumps(with_plugins(FLANNEL, FLANNEL["plugins"][0], ENTRY, FLANNEL["plugins"][1])),
        ("10-flannel.conflist", with_plugins(FLANNEL, *FLANNEL["plugins"], ENTRY), None),
    ),
    (
        "old entry replaced",
        "10-flannel.conflist",
        dumps(with_plugins(FLANNEL, *FLANNEL["plugins"], OURS_OLD_SOCKET)),
        ("10-flannel.conflist", with_plugins(FLANNEL, *FLANNEL["plugins"], ENTRY), None),
    ),
    (
        "duplicates collapsed",
        "10-flannel.conflist",
        dumps(with_plugins(FLANNEL, ENTRY, *FLANNEL["plugins"], ENTRY)),
        ("10-flannel.conflist", with_plugins(FLANNEL, *FLANNEL["plugins"], ENTRY), None),
    ),
    (
        "single .conf converted",
        "10-bridge.conf",
        dumps(BRIDGE_CONF),
        (
            "10-bridge.conflist",
            {"cniVersion": "1.0.0", "name": "mynet", "plugins": [BRIDGE_CONF, ENTRY]},
            "10-bridge.conf",
        ),
    ),
    (
        "single .json converted",
        "10-bridge.json",
        dumps(BRIDGE_CONF),
        (
            "10-bridge.conflist",
            {"cniVersion": "1.0.0", "name": "mynet", "plugins": [BRIDGE_CONF, ENTRY]},
            "10-bridge.json",
        ),
    ),
    ("malformed", "10-x.conflist", b'{"plugins": [', "10-x.conflist is not valid JSON"),
    ("not utf-8", "10-x.conflist", b"\xff\xfe", "10-x.conflist is not valid JSON"),
    ("array", "10-x.conflist", b"[]", "10-x.conflist is a JSON list, not an object"),
    (
        "old version",
        "10-x.conflist",
        dumps({**FLANNEL, "cniVersion": "0.2.0"}),
        "cniVersion 0.2.0 is not supported by nodemesh-cni",
    ),
    (
        "future cniVersions",
        "10-x.conflist",
        dumps({**FLANNEL, "cniVersion": "1.1.0", "cniVersions": ["1.1.0", "2.0.0"]}),
        "cniVersion 2.0.0 is not supported",
    ),
    (
        "no version",
        "10-x.conflist",
        dumps({k: v for k, v in FLANNEL.items() if k != "cniVersion"}),
        "10-x.conflist: cniVersion is missing",
    ),
    (
        "plugins not a list",
        "10-x.conflist",
        dumps({**FLANNEL, "plugins": {}}),
        "10-x.conflist: plugins is not a list",
    ),
    (
        "plugin without type",
        "10-x.conflist",
        dumps(with_plugins(FLANNEL, {"type": "flannel"}, {"name": "x"})),
        "plugins[1] is not an object with a type",
    ),
    (
        "only ours",
        "10-x.conflist",
        dumps(with_plugins(FLANNEL, ENTRY)),
        "has no plugin but nodemesh-cni; the primary CNI",
    ),
    (
        "conflist in a .conf",
        "10-x.conf",
        dumps(FLANNEL),
        "runtimes read .conf files as a single plugin; rename it to .conflist",
    ),
    (
        "conf without type",
        "10-x.conf",
        dumps({"cniVersion": "1.0.0", "name": "n"}),
        "10-x.conf: type is missing",
    ),
    (
        "conf of ours alone",
        "10-x.conf",
        dumps({"cniVersion": "1.0.0", "name": "n", "type": "nodemesh-cni"}),
        "configures nodemesh-cni alone",
    ),
    (
        "conf without name",
        "10-x.conf",
        dumps({"cniVersion": "1.0.0", "type": "bridge"}),
        "10-x.conf: name is missing",
    ),
    (
        "conf too old to chain",
        "10-x.conf",
        dumps({**BRIDGE_CONF, "cniVersion": "0.2.0"}),
        "cniVersion 0.2.0 is not supported",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [pytest.param(n, c, e, id=i) for i, n, c, e in INSTALL_TABLE],
)
def test_plan_install(name: str, content: bytes, expected: Any) -> None:
    plan = plan_install(name, content, ENTRY)
    if isinstance(expected, Keep):
        assert plan == expected
    elif isinstance(expected, str):
        assert isinstance(plan, Reject) and plan.name == name
        assert expected in plan.reason
    else:
        new_name, new_json, removed = expected
        assert isinstance(plan, Rewrite)
        assert (plan.name, plan.remove) == (new_name, removed)
        new = json.loads(plan.content)
        assert new == new_json
        # key order of everything we did not touch is kept
        assert list(new) == list(new_json)
        # and planning again on the result changes nothing
        assert plan_install(new_name, plan.content, ENTRY) == Keep(new_name)


UNINSTALL_TABLE: list[tuple[str, str, bytes, Any]] = [
    (
        "entry removed",
        "10-flannel.conflist",
        dumps(with_plugins(FLANNEL, *FLANNEL["plugins"], ENTRY)),
        FLANNEL,
    ),
    (
        "every entry removed",
        "10-flannel.conflist",
        dumps(with_plugins(FLANNEL, ENTRY, *FLANNEL["plugins"], OURS_OLD_SOCKET)),
        FLANNEL,
    ),
    ("untouched conflist", "10-flannel.conflist", dumps(FLANNEL), Keep("10-flannel.conflist")),
    ("single conf", "10-bridge.conf", dumps(BRIDGE_CONF), Keep("10-bridge.conf")),
    ("malformed", "10-x.conflist", b"{", "is not valid JSON"),
]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [pytest.param(n, c, e, id=i) for i, n, c, e in UNINSTALL_TABLE],
)
def test_plan_uninstall(name: str, content: bytes, expected: Any) -> None:
    plan = plan_uninstall(name, content)
    if isinstance(expected, Keep):
        assert plan == expected
    elif isinstance(expected, str):
        assert isinstance(plan, Reject) and expected in plan.reason
    else:
        assert isinstance(plan, Rewrite) and plan.name == name and plan.remove is None
        assert json.loads(plan.content) == expected


@pytest.mark.parametrize(
    ("names", "primary"),
    [
        (["99-x.conf", "10-a.conflist", "05-b.json", "README", "00.conf.bak"], "05-b.json"),
        (["10-flannel.conf", "10-flannel.conflist"], "10-flannel.conf"),
        ([".10-x.conflist.nodemesh-1a2b.tmp", "notes.txt"], None),
        ([], None),
    ],
)
def test_select_primary(names: list[str], primary: str | None) -> None:
    assert select_primary(names) == primary


# --- on real directories ---------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    source = tmp_path / "image" / "nodemesh-cni"
    source.parent.mkdir()
    source.write_bytes(b"\x7fELF plugin v1")
    bin_dir, conf_dir = tmp_path / "opt-cni-bin", tmp_path / "etc-cni-net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    return source, bin_dir, conf_dir


def installer(dirs: tuple[Path, Path, Path], interval: float = 2.0) -> CniInstaller:
    source, bin_dir, conf_dir = dirs
    return CniInstaller(
        plugin_binary=str(source),
        cni_bin_dir=str(bin_dir),
        cni_conf_dir=str(conf_dir),
        socket_path="/var/run/nodemesh/cni.sock",
        interval=interval,
    )


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_install_check_uninstall(dirs: tuple[Path, Path, Path]) -> None:
    source, bin_dir, conf_dir = dirs
    (conf_dir / "10-flannel.conflist").write_bytes(dumps(FLANNEL))
    (conf_dir / "99-loopback.conf").write_bytes(dumps({**BRIDGE_CONF, "type": "loopback"}))
    inst = installer(dirs)
    outcome = inst.check()
    assert outcome == Installed(str(conf_dir / "10-flannel.conflist"), changed=True)
    binary = bin_dir / "nodemesh-cni"
    assert binary.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    chained = json.loads((conf_dir / "10-flannel.conflist").read_bytes())
    assert chained["plugins"][-1] == ENTRY
    assert listing(bin_dir) == ["nodemesh-cni"]  # no temporary file left behind
    assert listing(conf_dir) == ["10-flannel.conflist", "99-loopback.conf"]

    # idempotent: nothing is rewritten
    before = (conf_dir / "10-flannel.conflist").stat().st_mtime_ns, binary.stat().st_ino
    assert inst.check() == Installed(str(conf_dir / "10-flannel.conflist"), changed=False)
    assert ((conf_dir / "10-flannel.conflist").stat().st_mtime_ns, binary.stat().st_ino) == before

    report = inst.uninstall()
    assert report.changed == (str(conf_dir / "10-flannel.conflist"),)
    assert report.binary_removed and report.refused == ()
    assert json.loads((conf_dir / "10-flannel.conflist").read_bytes()) == FLANNEL
    assert listing(bin_dir) == []
    # uninstalling again finds nothing to do
    again = inst.uninstall()
    assert again.changed == () and not again.binary_removed


def test_conf_is_converted_and_mode_kept(dirs: tuple[Path, Path, Path]) -> None:
    _, _, conf_dir = dirs
    conf = conf_dir / "10-bridge.conf"
    conf.write_bytes(dumps(BRIDGE_CONF))
    conf.chmod(0o600)
    inst = installer(dirs)
    assert inst.check() == Installed(str(conf_dir / "10-bridge.conflist"), changed=True)
    assert listing(conf_dir) == ["10-bridge.conflist"]
    converted = conf_dir / "10-bridge.conflist"
    assert stat.S_IMODE(converted.stat().st_mode) == 0o600
    assert json.loads(converted.read_bytes())["plugins"] == [BRIDGE_CONF, ENTRY]
    # the primary CNI writes its .conf again: it sorts first, so it is converted again
    conf.write_bytes(dumps({**BRIDGE_CONF, "bridge": "cni1"}))
    assert inst.check().changed  # type: ignore[union-attr]
    assert listing(conf_dir) == ["10-bridge.conflist"]
    assert json.loads(converted.read_bytes())["plugins"][0]["bridge"] == "cni1"
    inst.uninstall()
    assert json.loads(converted.read_bytes())["plugins"] == [BRIDGE_CONF | {"bridge": "cni1"}]


def test_waiting_and_refused_never_clobber(dirs: tuple[Path, Path, Path]) -> None:
    _, _, conf_dir = dirs
    inst = installer(dirs)
    assert isinstance(inst.check(), Waiting)
    (conf_dir / "05-broken.conflist").write_bytes(b'{"cniVersion": "1.0.0", "plugins": [')
    (conf_dir / "10-flannel.conflist").write_bytes(dumps(FLANNEL))
    outcome = inst.check()
    assert isinstance(outcome, Refused)
    assert outcome.path == str(conf_dir / "05-broken.conflist")
    assert "05-broken.conflist is not valid JSON" in outcome.reason
    assert (conf_dir / "05-broken.conflist").read_bytes().endswith(b"[")
    assert json.loads((conf_dir / "10-flannel.conflist").read_bytes()) == FLANNEL
    # uninstall leaves the broken file alone and reports nothing about it (not ours)
    report = inst.uninstall()
    assert report.refused == () and report.changed == ()


def test_missing_conf_dir_waits(dirs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    source, bin_dir, _ = dirs
    inst = CniInstaller(
        plugin_binary=str(source), cni_bin_dir=str(bin_dir), cni_conf_dir=str(tmp_path / "no")
    )
    assert isinstance(inst.ensure_config(), Waiting)


def test_file_changed_while_planning_is_not_replaced(dirs: tuple[Path, Path, Path]) -> None:
    _, _, conf_dir = dirs
    path = conf_dir / "10-flannel.conflist"
    path.write_bytes(dumps(FLANNEL))
    newer = dumps({**FLANNEL, "name": "written-meanwhile"})

    class Racing(CniInstaller):
        def _read(self, name: str) -> Any:
            snap = super()._read(name)
            time.sleep(0.01)  # a different mtime even on coarse clocks
            path.write_bytes(newer)  # the primary CNI rewrites its file right after our read
            return snap

    inst = Racing(
        plugin_binary=str(dirs[0]), cni_bin_dir=str(dirs[1]), cni_conf_dir=str(conf_dir)
    )
    assert isinstance(inst.ensure_config(), Waiting)
    assert path.read_bytes() == newer


def test_missing_plugin_binary(dirs: tuple[Path, Path, Path]) -> None:
    source, _, _ = dirs
    source.unlink()
    with pytest.raises(CniInstallError, match=r"cannot read the plugin binary .*\(make -C cni\)"):
        installer(dirs).install_binary()


def test_binary_replaced_when_different(dirs: tuple[Path, Path, Path]) -> None:
    _, bin_dir, _ = dirs
    (bin_dir / "nodemesh-cni").write_bytes(b"old version")
    inst = installer(dirs)
    assert inst.install_binary()
    assert (bin_dir / "nodemesh-cni").read_bytes() == b"\x7fELF plugin v1"
    assert not inst.install_binary()


async def test_run_waits_then_installs_and_repairs(dirs: tuple[Path, Path, Path]) -> None:
    _, _, conf_dir = dirs
    inst = installer(dirs, interval=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(inst.run(stop))
    try:
        await asyncio.sleep(0.1)
        assert not inst.installed.is_set()  # no primary CNI yet: waiting
        path = conf_dir / "10-flannel.conflist"
        await asyncio.to_thread(path.write_bytes, dumps(FLANNEL))
        async with asyncio.timeout(5):
            await inst.installed.wait()
        # the primary CNI restarts and rewrites its config without our entry
        await asyncio.to_thread(path.write_bytes, dumps(FLANNEL))
        # the file is the only observable here: poll it, with a deadline
        async with asyncio.timeout(5):
            while json.loads(await asyncio.to_thread(path.read_bytes))["plugins"][-1] != ENTRY:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
    assert not inst.installed.is_set()
