from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshctl import manifests
from meshctl.cli import main
from meshctl.errors import ManifestError

POLICY = """\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-client
  namespace: default
spec:
  selector: {matchLabels: {app: server}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: team-a
  labels: {nodemesh.io/dataplane-mode: enabled}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: robot
"""


def _write(tmp_path: Path, text: str, name: str = "m.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_writes_one_file_per_object(tmp_path: Path) -> None:
    config = tmp_path / "config"
    done = manifests.apply([_write(tmp_path, POLICY)], config)
    assert [str(m) for m in done] == [
        "authorizationpolicy/default/allow-client",
        "namespace/team-a",
        "serviceaccount/default/robot",
    ]
    assert sorted(p.name for p in config.iterdir()) == [
        "authorizationpolicy.default.allow-client.yaml",
        "namespace.team-a.yaml",
        "serviceaccount.default.robot.yaml",
    ]
    body = yaml.safe_load((config / "authorizationpolicy.default.allow-client.yaml").read_text())
    assert body["spec"] == {"selector": {"matchLabels": {"app": "server"}}}
    deleted, missing = manifests.delete([_write(tmp_path, POLICY)], config)
    assert len(deleted) == 3 and missing == []
    assert list(config.iterdir()) == []


BAD = [
    ("- a\n- b\n", "document 0: expected a mapping"),
    ("kind: Pod\nmetadata: {name: a}\n", "document 0: apiVersion: missing"),
    ("apiVersion: v1\nmetadata: {name: a}\n", "document 0: kind: missing"),
    ("apiVersion: v1\nkind: Deployment\nmetadata: {name: a}\n", "kind: unknown kind 'Deployment'"),
    ("apiVersion: apps/v1\nkind: Pod\nmetadata: {name: a}\n", "apiVersion: unknown apiVersion"),
    ("apiVersion: v1\nkind: Pod\n", "document 0: metadata: missing"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {labels: {}}\n", "metadata.name: missing"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\n", "metadata.name: 'Bad_Name'"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: X}\n", "metadata.namespace"),
    ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: b}\n", "cluster-scoped"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {x: 1}}\n", "metadata.labels"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: 3\n", "spec: must be a mapping"),
    ("a: [b\n", "not valid YAML at line"),
    ("", "contains no objects"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_invalid_documents_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        manifests.read(path)
    assert str(info.value).startswith(path)
    assert message in str(info.value)


def test_all_or_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config"
    good = _write(tmp_path, POLICY, "good.yaml")
    bad = _write(tmp_path, POLICY + "---\napiVersion: v1\nkind: Pod\nmetadata: {}\n", "bad.yaml")
    with pytest.raises(ManifestError, match=r"bad.yaml: document 3: metadata.name: missing"):
        manifests.apply([good, bad], config)
    assert not config.exists() or list(config.iterdir()) == []


def test_duplicate_object_in_one_file(tmp_path: Path) -> None:
    doc = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n"
    with pytest.raises(ManifestError, match=r"document 1: metadata.name: .*defined by document 0"):
        manifests.read(_write(tmp_path, doc + "---\n" + doc))


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    good = _write(tmp_path, POLICY, "good.yaml")
    assert main(["apply", "-f", good, "--state-dir", state]) == 0
    assert "namespace/team-a configured" in capsys.readouterr().out
    bad = _write(tmp_path, "apiVersion: v1\nkind: Pod\n", "bad.yaml")
    assert main(["apply", "-f", bad, "--state-dir", state]) == 1
    assert "bad.yaml: document 0: metadata" in capsys.readouterr().err
    assert main(["delete", "-f", good, "--state-dir", state]) == 0
    assert main(["delete", "-f", good, "--state-dir", state]) == 0
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["apply", "--state-dir", state])
    assert info.value.code == 2


def test_core_objects_get_the_controllers_validation() -> None:
    text = ("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
            "spec:\n  ports: [{name: http, port: eighty, targetPort: 8080}]\n")
    with pytest.raises(ManifestError) as info:
        manifests.parse(text, "svc.yaml")
    assert "spec.ports[0].port" in str(info.value)
    assert "svc.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", "nest"),  # was RecursionError
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: x, creationTimestamp: 2024-13-45}\n",
         "line 3"),  # was ValueError
    ],
)
def test_hostile_yaml_is_a_manifest_error(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ManifestError) as err:
        manifests.read(_write(tmp_path, text))
    assert str(err.value).startswith(str(tmp_path / "m.yaml")) and fragment in str(err.value)


def test_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from controller import yamlload

    path = _write(tmp_path, "#" * (yamlload.MAX_YAML_BYTES + 1))
    with pytest.raises(ManifestError, match="more than the"):
        manifests.read(path)
