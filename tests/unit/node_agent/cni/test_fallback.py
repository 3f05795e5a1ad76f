"""The fallback list: which pods the C plugin lets start while the node agent is unreachable.

The list is written by ``node_agent.cni.fallback`` and read by the real plugin binary, run as a
runtime runs it with no agent behind its socket."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from node_agent.cni import fallback, protocol
from node_agent.cni.errors import CniCode

from .helpers import ARGS, PREV_RESULT, cni_env, config

# --- the list (pure) ---------------------------------------------------------------------------


def test_passthrough_namespaces() -> None:
    namespaces = {
        "default": {},
        "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
        "shop": {"nodemesh.io/dataplane-mode": "enabled"},
        "legacy": {"nodemesh.io/dataplane-mode": "none"},
        "mixed": {},
        "Bad_Name": {},
    }
    pods = [
        ("mixed", {"nodemesh.io/dataplane-mode": "enabled"}),  # opts in by its own label
        ("default", {"nodemesh.io/dataplane-mode": "none"}),
        ("default", {"app": "x"}),
    ]
    assert fallback.passthrough_namespaces(namespaces, pods) == ["default", "kube-system", "legacy"]


def test_render_parse_round_trip() -> None:
    data = fallback.render("node-1\n# x", ["a", "b-2"], now=0)
    assert data.startswith(b"NODEMESH-CNI-FALLBACK 1\n# written by the nodemesh node agent of")
    assert b"node-1?# x at 1970-01-01T00:00:00Z\n" in data
    assert fallback.parse(data) == ["a", "b-2"]
    assert fallback.parse(fallback.render("n", [])) == []


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"NODEMESH-CNI-FALLBACK 2\nshop\n", "first line"),
        (b"NODEMESH-CNI-FALLBACK 1\nshop", "not terminated"),
        (b"NODEMESH-CNI-FALLBACK 1\nShop\n", "not a namespace name"),
    ],
)
def test_parse_rejects(data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        fallback.parse(data)


def test_write_is_atomic_and_readable_by_the_runtime(tmp_path: Path) -> None:
    path = tmp_path / "cni-fallback"
    fallback.write(path, fallback.render("n", ["a"]))
    fallback.write(path, fallback.render("n", ["b"]))
    assert fallback.parse(path.read_bytes()) == ["b"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["cni-fallback"]  # no temporary left over


def test_write_too_large_removes_the_old_list(tmp_path: Path) -> None:
    path = tmp_path / "cni-fallback"
    fallback.write(path, fallback.render("n", ["a"]))
    with pytest.raises(ValueError, match="over the plugin's limit"):
        fallback.write(path, b"x" * (fallback.MAX_BYTES + 1))
    assert not path.exists()
    fallback.remove(path)  # removing what is not there is fine


# --- the plugin, agent down --------------------------------------------------------------------


def run_plugin(
    binary: str,
    tmp_path: Path,
    stdin: bytes | dict[str, Any],
    command: str = "ADD",
    **env_override: str | None,
) -> tuple[int, bytes, bytes]:
    env = cni_env(command, **env_override)
    env["NODEMESH_CNI_SOCKET"] = str(tmp_path / "nobody-listens.sock")
    env.setdefault("NODEMESH_CNI_FALLBACK_FILE", str(tmp_path / "cni-fallback"))
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    proc = subprocess.run([binary], input=data, env=env, capture_output=True, timeout=30,
                          check=False)
    return proc.returncode, proc.stdout, proc.stderr


def listed(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / "cni-fallback"
    fallback.write(path, fallback.render("node-1", names))
    return path


@pytest.mark.parametrize("version", protocol.SUPPORTED_VERSIONS)
def test_listed_namespace_passes_through(plugin_binary: str, tmp_path: Path, version: str) -> None:
    listed(tmp_path, "default", "shop")  # CNI_ARGS says K8S_POD_NAMESPACE=shop
    code, out, err = run_plugin(plugin_binary, tmp_path, config(version))
    assert code == 0, err
    assert json.loads(out) == json.loads(protocol.success_output(version, PREV_RESULT))
    assert out.endswith(b"}\n") and out.count(b"\n") == 1
    assert b"namespace shop is on the fallback list" in err
    assert b"the pod starts without the mesh" in err


@pytest.mark.parametrize(
    ("names", "env", "reason"),
    [
        (["default", "sho", "shop-2", " shop"], {},
         "namespace shop is not on the fallback list"),
        (["shop"], {"NODEMESH_CNI_FALLBACK_FILE": ""}, "the fallback list is turned off"),
    ],
)
def test_unlisted_namespace_fails_closed(
    plugin_binary: str, tmp_path: Path, names: list[str], env: dict[str, str], reason: str
) -> None:
    path = tmp_path / "cni-fallback"
    path.write_bytes(("NODEMESH-CNI-FALLBACK 1\n" + "".join(f"{n}\n" for n in names)).encode())
    code, out, _ = run_plugin(plugin_binary, tmp_path, config(), **env)
    assert code == 1
    err = json.loads(out)
    assert err["code"] == CniCode.TRY_AGAIN_LATER
    assert reason in err["msg"] and err["msg"].endswith("; the kubelet will retry")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"NODEMESH-CNI-FALLBACK 2\nshop\n",
        b"shop\n",
        b"NODEMESH-CNI-FALLBACK 1\nshop",  # cut short: the last line is not terminated
        b"NODEMESH-CNI-FALLBACK 1\n" + b"#" * (fallback.MAX_BYTES + 10) + b"\nshop\n",
    ],
)
def test_unreadable_list_fails_closed(plugin_binary: str, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cni-fallback"
    path.write_bytes(content)
    code, out, _ = run_plugin(plugin_binary, tmp_path, config())
    assert code == 1
    assert f"{path} is not a readable fallback list" in json.loads(out)["msg"]


def test_symlinked_list_is_not_followed(plugin_binary: str, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    fallback.write(real, fallback.render("n", ["shop"]))
    (tmp_path / "cni-fallback").symlink_to(real)
    code, out, _ = run_plugin(plugin_binary, tmp_path, config())
    assert code == 1 and "no fallback list at" in json.loads(out)["msg"]


def test_not_a_kubernetes_pod_passes_through(plugin_binary: str, tmp_path: Path) -> None:
    # the agent never meshes a sandbox without K8S_POD_NAMESPACE; no list needed
    code, out, err = run_plugin(plugin_binary, tmp_path, config(), CNI_ARGS="IgnoreUnknown=1")
    assert code == 0, err
    assert json.loads(out)["ips"] == PREV_RESULT["ips"]
    assert b"not a Kubernetes pod" in err


def test_listed_but_no_prev_result_fails(plugin_binary: str, tmp_path: Path) -> None:
    listed(tmp_path, "shop")
    for conf in (config(prev=None), config(prev=[1, 2]), b'{"cniVersion":"1.0.0","prevResult":{'):
        code, out, _ = run_plugin(plugin_binary, tmp_path, conf)
        assert code == 1
        assert "no prevResult object to return" in json.loads(out)["msg"]


def test_del_and_check_unchanged(plugin_binary: str, tmp_path: Path) -> None:
    listed(tmp_path, "shop")
    for command in ("DEL", "CHECK"):
        assert run_plugin(plugin_binary, tmp_path, config(), command)[:2] == (0, b"")


def test_reachable_agent_is_not_overridden_by_the_list(
    plugin_binary: str, tmp_path: Path
) -> None:
    """The list is only for an agent that cannot be reached: a broken answer still fails."""
    import socket
    import threading

    listed(tmp_path, "shop")
    sock_path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock_path))
    srv.listen(1)

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"garbage\n")

    t = threading.Thread(target=answer)
    t.start()
    try:
        env = cni_env("ADD")
        env["NODEMESH_CNI_SOCKET"] = str(sock_path)
        env["NODEMESH_CNI_FALLBACK_FILE"] = str(tmp_path / "cni-fallback")
        proc = subprocess.run([plugin_binary], input=json.dumps(config()).encode(), env=env,
                              capture_output=True, timeout=30, check=False)
    finally:
        t.join(10)
        srv.close()
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == CniCode.AGENT_PROTOCOL


# --- the plugin's JSON scanner, against Python's JSON ------------------------------------------


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        alphabet = 'ab{}[],:"\\/ \t\nü€\u2028\x01'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind == "int":
        return rng.randrange(-(10**12), 10**12)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_random_key(rng): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _random_key(rng: random.Random) -> str:
    return rng.choice(["ips", "cniVersion", "a\"b", "{", "dns", "", "routes", "ü"])


@pytest.mark.parametrize("seed", range(40))
def test_prev_result_copied_exactly(plugin_binary: str, tmp_path: Path, seed: int) -> None:
    """Whatever the previous result holds (strings with brackets, quotes and escapes, nesting,
    whitespace), the plugin returns it member for member, with the config's cniVersion."""
    rng = random.Random(seed)
    listed(tmp_path, "shop")
    prev = {_random_key(rng): _random_json(rng) for _ in range(rng.randrange(6))}
    prev.update({"ips": PREV_RESULT["ips"]} if rng.random() < 0.5 else {})
    conf = {"name": "x", "type": "nodemesh-cni", "prevResult": prev, "cniVersion": "1.0.0"}
    indent = rng.choice([None, 1, "\t"])
    data = json.dumps(conf, indent=indent, ensure_ascii=rng.random() < 0.5).encode()
    code, out, err = run_plugin(plugin_binary, tmp_path, data, CNI_ARGS=ARGS)
    assert code == 0, (err, data)
    assert json.loads(out) == json.loads(protocol.success_output("1.0.0", prev))


def test_default_list_path_matches_the_agent() -> None:
    source = (Path(__file__).resolve().parents[4] / "cni" / "nodemesh-cni.c").read_text()
    assert f'#define DEFAULT_FALLBACK "{fallback.DEFAULT_PATH}"' in source
    assert f'#define FALLBACK_MAGIC "{fallback.MAGIC}"' in source
    assert "#define MAX_FALLBACK_BYTES (1024 * 1024)" in source
    assert fallback.MAX_BYTES == 1024 * 1024
    assert os.path.dirname(fallback.DEFAULT_PATH) == os.path.dirname(
        "/var/run/nodemesh/cni.sock"
    )
