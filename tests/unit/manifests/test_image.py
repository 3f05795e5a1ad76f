"""daemonset/image/Dockerfile, checked offline (no image is built here): what it copies exists and
is not filtered out of the build context, it is Debian 12 with python3-bpfcc, and the paths and
names it sets are those the manifests and the components use."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from tests.unit.manifests.helpers import DAEMONSET, REPO, find

DOCKERFILE = DAEMONSET / "image" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1].strip()}" if line.endswith("\\") else f"{pending} {line}"
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    assert not pending, "Dockerfile ends inside a continued instruction"
    return out


def ignored(path: str) -> bool:
    patterns = [
        line.strip() for line in (DAEMONSET / "image" / "Dockerfile.dockerignore")
        .read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    parts = path.rstrip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.removeprefix("**/")) or fnmatch.fnmatch(p, pat)
               for p in prefixes for pat in patterns)


def test_copy_sources_exist_in_the_build_context() -> None:
    copies = [args for word, args in instructions() if word == "COPY"]
    assert copies
    for args in copies:
        if args.startswith("--from="):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not ignored(source), f"COPY {source}: excluded by Dockerfile.dockerignore"


def test_dockerignore_filters_what_it_should() -> None:
    assert ignored(".venv") and ignored(".git") and ignored("controller/__pycache__")
    assert not ignored("controller/cli.py")


def test_debian_12_with_bcc() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    args = dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)
    assert args["DEBIAN"] == "docker.io/library/debian:bookworm-slim"
    assert all(f.startswith("${DEBIAN}") for f in froms), froms
    runs = " ".join(a for w, a in instructions() if w == "RUN")
    assert "python3-bpfcc" in runs
    assert "python -c 'import bcc'" in runs


def test_paths_agree_with_the_manifests_and_components() -> None:
    from node_agent import config as agent_config

    text = " ".join(f"{w} {a}" for w, a in instructions())
    spec = find("DaemonSet", "nodemesh-node")["spec"]["template"]["spec"]
    (agent,) = [c for c in spec["containers"] if c["name"] == "node-agent"]
    plugin = next(a.split("=", 1)[1] for a in agent["args"] if a.startswith("--cni-plugin="))
    assert f"COPY --from=cni /src/cni/build/nodemesh-cni {plugin}" in text
    assert f"{agent_config.ENV_BPF_DIR}=/opt/nodemesh/bpf" in text
    assert "COPY bpf/ /opt/nodemesh/bpf/" in text
    with (REPO / "pyproject.toml").open("rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    for c in (*spec["containers"],
              *find("Deployment", "nodemesh-controller")["spec"]["template"]["spec"]
              ["containers"]):
        (command,) = c["command"]
        assert command in scripts, command
        assert re.search(rf"\b{re.escape(command)} --help\b", text), f"{command} not smoke-run"
