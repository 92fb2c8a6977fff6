"""Reading a sweep file as plain data only: UTF-8 text, no YAML tags that build objects, no key given
twice, no alias bomb ("billion laughs"). Each refusal is one problem line naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.spec.errors import SpecError, path_str

#: a sweep file expands (aliases included) to at most this many YAML nodes
MAX_YAML_NODES = 100_000
_PLAIN_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}
_TOO_DEEP = "nested too deeply (allowed: a sweep file of ordinary depth)"


def _bad_tags(node: yaml.Node, loc: tuple[Any, ...] = ()) -> list[tuple[str, str, int]]:
    """(key path, tag, line) of every node whose tag would build something other than plain data."""
    out = []
    if node.tag not in _PLAIN_TAGS:
        out.append((path_str(loc), node.tag, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else "?"
            out += _bad_tags(v, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _bad_tags(v, (*loc, i))
    return out


def _count_nodes(node: yaml.Node, limit: int) -> int:
    """Nodes of the document as it would be built, aliases expanded, counting stops past `limit`.

    Aliases make the composed graph a DAG; walking it as a tree (with a cap) measures what
    validation and error messages would have to touch, so a "billion laughs" file is refused
    instead of hanging the CLI.
    """
    count, stack = 0, [node]
    while stack and count <= limit:
        n = stack.pop()
        count += 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack += [k, v]
        elif isinstance(n, yaml.SequenceNode):
            stack += n.value
    return count


def _duplicate_keys(node: yaml.Node, loc: tuple[Any, ...] = (), seen: set[int] | None = None) -> list[str]:
    """(key path, line) of every key given twice in one mapping (YAML would silently keep the last)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return []
    seen.add(id(node))
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else "?"
            if isinstance(k, yaml.ScalarNode) and key in keys:
                out.append(f"{path_str((*loc, key))}: key given twice (line {k.start_mark.line + 1})")
            keys.add(key)
            out += _duplicate_keys(v, (*loc, key), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(v, (*loc, i), seen)
    return out


def _yaml_error(src: str, e: yaml.YAMLError) -> str:
    """One line: where (line, column) and what, instead of PyYAML's multi-line dump."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{src}: not valid YAML{where}: {problem}" + (f" ({context})" if context else "")


def _read_text(path: Path) -> str:
    src = str(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SpecError([f"{src}: file does not exist"]) from None
    except IsADirectoryError:
        raise SpecError([f"{src}: is a directory (allowed: a YAML sweep file)"]) from None
    except UnicodeDecodeError as e:
        raise SpecError(
            [f"{src}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}; allowed: a UTF-8 "
             "YAML file)"]
        ) from None
    except OSError as e:
        raise SpecError([f"{src}: cannot read ({e.strerror or e})"]) from None


def read_yaml(path: Path) -> Any:
    """The sweep file's data (plain dicts, lists and scalars), or SpecError."""
    src = str(path)
    text = _read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError([_yaml_error(src, e)]) from None
    except RecursionError:
        raise SpecError([f"{src}: {_TOO_DEEP}"]) from None
    if node is not None:
        if _count_nodes(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise SpecError(
                [f"{src}: expands to more than {MAX_YAML_NODES} YAML values (aliases included) "
                 "(allowed: a sweep file of ordinary size; avoid nested *aliases)"]
            )
        bad = _bad_tags(node)
        if bad:
            raise SpecError(
                [
                    f"{src}: {key}: YAML tag {tag.replace('tag:yaml.org,2002:', '!!')} at line {line} is not "
                    "allowed (allowed: plain YAML: mappings, lists, strings, numbers, booleans, null)"
                    for key, tag, line in bad
                ]
            )
        dups = _duplicate_keys(node)
        if dups:
            raise SpecError([f"{src}: {d} (allowed: each key once)" for d in dups])
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # a constructor error compose() cannot see
        raise SpecError([_yaml_error(src, e)]) from None
    except RecursionError:
        raise SpecError([f"{src}: {_TOO_DEEP}"]) from None
