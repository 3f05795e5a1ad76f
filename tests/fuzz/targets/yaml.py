"""Fuzz targets of the YAML that users write (the config dir, ``meshctl apply -f``,
``meshctl policy validate``), all loaded through :mod:`controller.yamlload`.

* ``yaml.localsource``: one file's text through :func:`controller.localsource.load_documents`
  and the objects through :func:`controller.translate.translate` with the last good
  configuration of a valid file: nothing raises; a file that does not load is one issue
  naming the file (with a line where the parser gave one) and none of its objects.
* ``yaml.manifests``: the text through :func:`meshctl.manifests.parse`: only
  :class:`ManifestError` escapes, and it names the file.
* ``yaml.policy``: the text through :func:`meshctl.policy.validate_text`: nothing raises,
  every problem names the file.

Also the hostile YAML texts (alias bombs, deep nesting, tags, odd keys, self-references) the
fuzz tier splices into near-valid objects (``tests/fuzz/test_yaml.py``).
"""

from __future__ import annotations

import yaml

from controller import localsource, translate
from meshctl import manifests
from meshctl import policy as meshctl_policy
from meshctl.errors import ManifestError
from tests.fuzz.harness import target

SOURCE = "fuzz.yaml"
#: a YAML text is at most a few KiB here; what it may expand to is bounded by yamlload
_MAX_BYTES = 16 * 1024 * 1024


def _bomb(levels: int, width: int) -> str:
    out = f'l0: &l0 [{",".join(["x"] * width)}]\n'
    for i in range(1, levels):
        out += f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * width)}]\n"
    return out


#: whole texts, or (indented as a value) pieces of one
HOSTILE_YAML = [
    _bomb(9, 9), _bomb(5, 20), _bomb(3, 9), "&a [*a]", "&a {x: *a}", "*undefined",
    "[" * 70 + "]" * 70, "[" * 2000, "{a: " * 70 + "1" + "}" * 70, "- " * 70 + "x",
    "!!python/object:os.system {}", "!!python/object/apply:os.system [id]",
    "!!python/name:os.system", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]",
    "!!timestamp 2024-01-01", "!!float .nan", ".inf", "!custom x", "!!str", "? [a, b]\n: c",
    "{1: a, true: b, null: c, 1.5: d}", "{[a]: b}", "<<: {x: 1}", "0x1F", "0o17", "1_000",
    "~", "''", "'\\ud800'", "\"\\ud800\"", "\"\\x00\"", "\t", "%YAML 1.1\n---\na: 1",
    "--- |\n  text", "... ", "a: b: c", "- a\nb: c", "\ufeffa: 1", "&a x\n---\n*a",
]


def _load_file(text: str) -> localsource.FileContent:
    content = localsource.load_documents(SOURCE, text)
    if content.issue is not None:
        assert content.issue.source == SOURCE and not content.objects
    return content


_GOOD = localsource.load_documents("good.yaml", """\
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, uid: u1, labels: {app: web}}
spec: {nodeName: node-1, serviceAccountName: web, containers: [{name: app}]}
status: {phase: Running, podIP: 10.78.1.2}
""")
_LAST_GOOD = translate.translate(_GOOD.objects).accepted


@target("yaml.localsource", max_bytes=_MAX_BYTES)
def yaml_localsource(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # LocalSource._read reports it before parsing
    content = _load_file(text)
    stale = [SOURCE] if content.issue is not None else []
    result = translate.translate([*_GOOD.objects, *content.objects], last_good=_LAST_GOOD,
                                 stale_sources=stale)
    assert "u1" in result.workloads  # the other file's pod is never lost
    for issue in result.errors:
        assert issue.source in (SOURCE, "good.yaml")


@target("yaml.manifests", max_bytes=_MAX_BYTES)
def yaml_manifests(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        manifests.parse(text, SOURCE)
    except ManifestError as exc:
        assert exc.file == SOURCE and str(exc).startswith(SOURCE)


@target("yaml.policy", max_bytes=_MAX_BYTES)
def yaml_policy(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for problem in meshctl_policy.validate_text(text, SOURCE):
        assert problem.file == SOURCE and problem.message


def dump(doc: object) -> str:
    """``doc`` as YAML (anything safe_dump refuses, e.g. a lone surrogate, as a repr)."""
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return repr(doc)
