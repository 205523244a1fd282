"""Where in the YAML file an error is: the path and line that every config error names; and
what YAML itself lets through but a configuration must not have (aliases that expand
without bound, a key given twice)."""

from __future__ import annotations

from typing import Any

import yaml

# libyaml when installed: a 10,000-backend file parses in a fraction of a second, not tens.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Nodes that aliases may add to a file: a real configuration's few anchors add tens. Nine
# anchors of nine aliases each ("billion laughs", 400 bytes) would add 387 million, and the
# errors about them once ran to megabytes of text.
MAX_ALIAS_NODES = 100_000
MAX_PROBLEMS = 20  # a file with more errors gets the first ones and a count of the rest
MAX_INPUT_CHARS = 80
MERGE_TAG = "tag:yaml.org,2002:merge"


def check_tree(root: yaml.Node, anchors: bool = True) -> list[str]:
    """What the node tree has that loading it would hide or blow up: aliases that expand past
    MAX_ALIAS_NODES or into themselves, and keys given twice in one mapping (a loader keeps
    the last silently: a backend defined twice would lose its first definition).

    Each node is visited once however many aliases point at it: the check costs what the
    file's text does, never what its expansion would. `anchors=False` (the text has no `&`)
    skips the alias count.
    """
    if anchors and (problem := _alias_problem(root)):
        return [problem]
    problems: list[str] = []
    visited: set[int] = set()
    # (node, where): `where` links a node to its parent's, (key, parent's where), so that
    # the dotted path of an error is only built for the error.
    stack: list[tuple[yaml.Node, Any]] = [(root, None)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, yaml.ScalarNode) or id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, Any], int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != MERGE_TAG:
                    line = k.start_mark.line + 1
                    if (k.tag, k.value) in lines:
                        problems.append(
                            f"{_dotted((k.value, where))} (line {line}): duplicate key "
                            f"{short(k.value)} (first at line {lines[k.tag, k.value]}); "
                            "give a key once"
                        )
                    else:
                        lines[k.tag, k.value] = line
                else:
                    stack.append((k, where))
                stack.append((v, (k.value, where)))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, (i, where)) for i, item in enumerate(node.value)]
    return problems


def _alias_problem(root: yaml.Node) -> str | None:
    size: dict[int, int] = {}  # id(node) -> nodes in its expansion, for every distinct node
    started: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            size[key] = 1 + sum(size[id(child)] for child in _children(node))
        elif key in size:
            continue
        elif isinstance(node, yaml.ScalarNode):
            size[key] = 1
        elif key in started:  # an ancestor: the alias points into its own anchor
            return f"line {node.start_mark.line + 1}: an alias that contains itself"
        else:
            started.add(key)
            stack.append((node, True))
            stack += [(child, False) for child in _children(node)]
    added = size[id(root)] - len(size)
    if added > MAX_ALIAS_NODES:
        return (
            f"aliases expand this file by {added:,} nodes (at most {MAX_ALIAS_NODES:,}): "
            "write the values out, or use fewer aliases"
        )
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _dotted(where: Any) -> str:
    parts = []
    while where is not None:
        key, where = where
        parts.append(str(key))
    return ".".join(reversed(parts)) or "<top>"


def short(value: Any) -> str:
    """repr(value), cut to MAX_INPUT_CHARS: an error quotes what it refuses, not all of it."""
    text = repr(value)
    return text if len(text) <= MAX_INPUT_CHARS else text[: MAX_INPUT_CHARS - 5] + "...'"


def capped(problems: list[str], of: list[str] | None = None) -> list[str]:
    """The first MAX_PROBLEMS problems and how many more there were (of `of`, when the
    problems are the first few of a longer list)."""
    total = len(problems if of is None else of)
    if total <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {total - MAX_PROBLEMS} more problems"]


def tree(text: str) -> yaml.Node | None:
    """The YAML node tree, for the line of each error."""
    return yaml.compose(text, Loader=LOADER)


def describe(err: Any, root: yaml.Node | None, prefix: tuple[str, ...]) -> str:
    loc = prefix + tuple(str(p) for p in err["loc"])
    # pydantic puts a model-level error on the model itself; a chain error already names its path.
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = f"invalid value {short(err['input'])} ({msg.replace('Input should be', 'valid:')})"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field (not allowed here)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    dotted = ".".join(p for p in loc if not p.startswith("function-after") and p != "[key]")
    dotted = dotted or "<top>"
    line = line_of(root, loc)
    if msg.startswith("profiles.") and "chain" in msg:
        parts = msg.split("; ")
        return "; ".join(capped([_with_line(root, p) for p in parts[: MAX_PROBLEMS + 1]], parts))
    return f"{dotted} (line {line}): {msg}" if line else f"{dotted}: {msg}"


def _with_line(root: yaml.Node | None, message: str) -> str:
    path = message.split(":", 1)[0]
    line = line_of(root, tuple(path.split(".")))
    return f"{path} (line {line}):{message.split(':', 1)[1]}" if line else message


def line_of(node: yaml.Node | None, loc: tuple[str, ...]) -> int | None:
    """The 1-based YAML line of the deepest node that `loc` reaches."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == part:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line
