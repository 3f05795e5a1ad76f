"""Bounded YAML loading for what users write: the config dir (:mod:`controller.localsource`),
``meshctl apply -f`` and ``meshctl policy validate``.

``yaml.SafeLoader`` refuses arbitrary objects but not input that is merely huge: aliases are
expanded by whoever walks the result ("billion laughs": nine anchors of nine aliases each are
a few hundred bytes of text and 9**9 nodes to the translation that walks them), and the pure-
Python composer recurses once per nesting level (``RecursionError`` at about 1000). So before
anything is composed, the event stream (iterative, no recursion) is checked against three
bounds, and a document over any of them is refused as a whole:

* the text: at most :data:`MAX_YAML_BYTES`;
* nesting of mappings and sequences: at most :data:`MAX_YAML_DEPTH`;
* nodes *after* alias expansion (an alias counts as the size of what it names):
  at most :data:`MAX_YAML_NODES` per text;
* no alias inside the node it names (``&a [*a]``: a structure that contains itself).

Values SafeLoader recognises but cannot build (a timestamp ``2024-13-45``, an integer of
5000 digits, ``!!bool maybe``) raise :class:`YamlValueError` with their line, instead of the
``ValueError``/``KeyError``/``AttributeError`` PyYAML lets out.

The errors are :class:`yaml.MarkedYAMLError` s, so every caller that already reports YAML errors
with their line keeps doing so, and the message names the bound.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 250_000

# the C parser and loader are much faster, with the same safety (no arbitrary objects)
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlLimitError(yaml.MarkedYAMLError):
    """A YAML text over one of this module's bounds (``problem_mark`` is where it was seen)."""


class YamlValueError(yaml.MarkedYAMLError):
    """A scalar SafeLoader recognises but cannot build (``2024-13-45`` as a timestamp, an
    integer of 5000 digits, ``!!bool maybe``): PyYAML lets ``ValueError``, ``KeyError`` or
    ``AttributeError`` out for these; here they carry the node's line like every YAML error."""


#: what SafeConstructor's scalar constructors raise on a value they do not accept
_CONSTRUCT_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError)


class _Loader(_BaseLoader):  # type: ignore[misc]
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _CONSTRUCT_ERRORS as exc:
            raise YamlValueError(
                problem=f"cannot read {node.tag.rsplit(':', 1)[-1]} value "
                f"{str(node.value)[:40]!r}: {exc}",
                problem_mark=node.start_mark,
            ) from None


def _mark(event: yaml.Event) -> Any:
    # the C parser's marks (yaml._yaml.Mark) are not yaml.error.Mark to the stubs, but
    # MarkedYAMLError only formats them
    return event.start_mark


def check(text: str) -> None:
    """Raise :class:`YamlLimitError` (or the parser's own ``YAMLError``) unless ``text`` is
    within the bounds. Parses events only: nothing is composed or constructed."""
    if len(text) > MAX_YAML_BYTES:
        raise YamlLimitError(
            problem=f"the text is {len(text)} characters, more than the {MAX_YAML_BYTES} "
            "accepted; split it into several files"
        )
    sizes: dict[str, int] = {}  # anchor -> expanded node count of the node it names
    stack: list[list[Any]] = []  # open collections: [expanded size so far, anchor]
    total = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_YAML_DEPTH:
                raise YamlLimitError(
                    problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                    problem_mark=_mark(event),
                )
            stack.append([1, event.anchor])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            if any(event.anchor == open_anchor for _, open_anchor in stack):
                # SafeLoader would build a structure that contains itself: every walk of it
                # (translation, copying, printing) recurses without end
                raise YamlLimitError(
                    problem=f"alias *{event.anchor} refers to a node that contains it",
                    problem_mark=_mark(event),
                )
            # an undefined alias is the composer's error to report; count it as one node
            size, anchor = sizes.get(event.anchor or "", 1), None
        else:
            continue  # stream and document start/end
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1][0] += size
            grown = stack[-1][0]
        else:
            total += size
            grown = total
        if grown > MAX_YAML_NODES or total + size > MAX_YAML_NODES:
            raise YamlLimitError(
                problem=f"more than {MAX_YAML_NODES} nodes once aliases are expanded "
                "(a YAML alias bomb?)",
                problem_mark=_mark(event),
            )


def load_all(text: str) -> list[object]:
    """Every document of ``text`` (SafeLoader semantics), after :func:`check`."""
    check(text)
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except _CONSTRUCT_ERRORS as exc:  # raised outside construct_object (filling a collection)
        raise YamlValueError(problem=f"cannot read a value: {exc}") from None


def compose_all(text: str) -> list[yaml.Node]:
    """The node tree of every document (for line numbers), after :func:`check`."""
    check(text)
    return list(yaml.compose_all(text, Loader=_Loader))
