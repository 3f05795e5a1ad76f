"""controller.yamlload: the bounded YAML loader of the config dir and meshctl (issue 10)."""

from __future__ import annotations

import pytest
import yaml

from controller import yamlload


def _bomb(levels: int, width: int) -> str:
    out = f'l0: &l0 [{",".join(["x"] * width)}]\n'
    for i in range(1, levels):
        out += f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * width)}]\n"
    return out


@pytest.mark.parametrize(
    ("text", "fragment", "line"),
    [
        (_bomb(9, 9), "once aliases are expanded", 6),  # 9**9 nodes to whoever walks it
        ("a: &a [1, *a]\n", "refers to a node that contains it", 1),
        ("a:\n  b: " + "[" * 70 + "]" * 70 + "\n", "nested deeper than 64", 2),
        ("x" * (yamlload.MAX_YAML_BYTES + 1), "more than the", None),
        # SafeLoader let these out as AttributeError, ValueError, KeyError
        ("a: !!timestamp 2024-01-01\n  null\n", "cannot read timestamp", 1),
        ("a:\n  b: 2024-13-45\n", "month must be in 1..12", 2),
        ("a: " + "1" * 5000 + "\n", "4300 digits", 1),
        ("a:\n  - !!bool maybe\n", "cannot read bool", 2),
    ],
    ids=["alias-bomb", "self-reference", "deep", "too-large", "timestamp-tag", "month-13",
         "long-int", "bool-tag"],
)
def test_refused_with_a_marked_yaml_error(text: str, fragment: str, line: int | None) -> None:
    with pytest.raises(yaml.MarkedYAMLError) as err:
        yamlload.load_all(text)
    assert fragment in str(err.value)
    mark = err.value.problem_mark
    assert (mark.line + 1 if mark is not None else None) == line


def test_aliases_within_the_budget_and_merge_keys_load() -> None:
    docs = yamlload.load_all(_bomb(4, 9) + "m: {<<: {x: 1}, y: 2}\n---\nb: 1\n")
    assert len(docs) == 2 and docs[0]["m"] == {"x": 1, "y": 2}  # type: ignore[index]
    assert yamlload.compose_all("a: 1\n")[0].start_mark.line == 0
    with pytest.raises(yaml.constructor.ConstructorError):
        yamlload.load_all("a: !!python/object/apply:os.system [id]\n")
