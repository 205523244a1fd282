"""Where in the YAML file an error is: the path and line that every config error names."""

from __future__ import annotations

from typing import Any

import yaml

# libyaml when installed: a 10,000-backend file parses in a fraction of a second, not tens.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def tree(text: str) -> yaml.Node | None:
    """The YAML node tree, for the line of each error."""
    return yaml.compose(text, Loader=LOADER)


def describe(err: Any, root: yaml.Node | None, prefix: tuple[str, ...]) -> str:
    loc = prefix + tuple(str(p) for p in err["loc"])
    # pydantic puts a model-level error on the model itself; a chain error already names its path.
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = f"invalid value {err['input']!r} ({msg.replace('Input should be', 'valid:')})"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field (not allowed here)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    dotted = ".".join(p for p in loc if not p.startswith("function-after") and p != "[key]")
    dotted = dotted or "<top>"
    line = line_of(root, loc)
    if msg.startswith("profiles.") and "chain" in msg:
        return "; ".join(_with_line(root, part) for part in msg.split("; "))
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
