"""The code's shape, checked against what the docs say about it (issue 23): no import cycle in libs/, no module
past ~400 lines, every library module named in ARCHITECTURE.md's layout (and nothing named that is not
there), the package docstring listing every public name, the library README's settings tables matching the
dataclasses, and no document pointing outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBS = sorted(ROOT.glob("libs/*/src"))
OUTBOX = ROOT / "libs/outbox/src/outbox"
MAX_LINES = 420  # "~400": a module past this is split when reworked


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for src in LIBS:
        for path in src.rglob("*.py"):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        # A module's own package is imported by Python first anyway: not an edge of the code's making.
        edges |= {n for n in names if n in known and n != module and not module.startswith(n + ".")}
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_of_libs_has_no_cycle() -> None:
    known = _modules()
    graph = {module: _imports(module, path, known) for module, path in known.items()}
    assert _cycles(graph) == []


def test_no_library_module_is_past_about_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules().values()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def _layout_block() -> list[str]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    start = text.index("libs/outbox/ ")
    return text[start : text.index("\nlibs/servicekit/", start)].splitlines()[1:]


def _named_in_layout() -> set[str]:
    """Files named in the layout, by indentation: `  name.py` at the top level, `    name.py` under a
    `  package/` heading, `      name.py` under a `    subpackage/` one; a line indented deeper than any
    entry (a continuation) belongs to the entry above it."""
    named: set[str] = set()
    packages: list[str] = []  # the headings above the current line, by depth
    depth = 0
    for line in _layout_block():
        indent = len(line) - len(line.lstrip(" "))
        entry = indent in (2, 4, 6)
        if entry:
            depth = indent // 2 - 1
            del packages[depth:]
            heading = re.match(r"\s+(\w+)/\s", line)
            if heading:
                packages.append(heading.group(1) + "/")
        prefix = "".join(packages[:depth])
        for name in re.findall(r"(?<![\w/.])(\w+\.py)\b", line):
            named.add(prefix + name)
    return named


def test_architecture_names_every_library_module_and_only_those() -> None:
    # A package's __init__.py that only documents it need not be named; one with code must be.
    files = {
        str(path.relative_to(OUTBOX))
        for path in OUTBOX.rglob("*.py")
        if path.name != "__init__.py" or path.parent == OUTBOX or _has_code(path)
    }
    named = _named_in_layout()
    assert sorted(files - named) == [], "modules missing from ARCHITECTURE.md's layout"
    assert sorted(named - files) == [], "ARCHITECTURE.md's layout names modules that do not exist"


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def test_the_package_docstring_lists_every_public_name() -> None:
    tree = ast.parse((OUTBOX / "__init__.py").read_text())
    docstring = ast.get_docstring(tree) or ""
    exported = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
    )
    assert isinstance(exported, ast.List)
    names = [elt.value for elt in exported.elts if isinstance(elt, ast.Constant)]
    missing = [name for name in names if not re.search(rf"\b{re.escape(str(name))}\b", docstring)]
    assert missing == []


def test_no_document_points_outside_the_repository() -> None:
    documents = [
        ROOT / "README.md",
        ROOT / "ARCHITECTURE.md",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("libs/*/README.md"),
        *ROOT.glob("tests/**/README.md"),
    ]
    outside = {
        str(doc.relative_to(ROOT)): match.group(0)
        for doc in documents
        for match in [re.search(r"\.\./shared|/work/|(?<![\w/])(DESIGN|BROKER)\.md", doc.read_text())]
        if match
    }
    assert outside == {}


def _documented_settings(kind: str) -> dict[str, tuple[str, str]]:
    """The library README's `| <kind> | variable | default | ... |` table: field -> (variable, default)."""
    text = (ROOT / "libs/outbox/README.md").read_text()
    start = text.index(f"| {kind} | variable | default |")
    rows: dict[str, tuple[str, str]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        field, variable, default = (cell.strip().strip("`") for cell in line.strip("|").split("|")[:3])
        rows[field] = (variable, default)
    return rows


def test_the_library_readme_lists_every_setting_with_its_variable_and_default() -> None:
    import dataclasses
    from datetime import timedelta

    from outbox import ConsumerSettings, RelaySettings
    from outbox.consumer.settings import CONSUMER_ENV
    from outbox.env_settings import env_name
    from outbox.relay.settings import RELAY_ENV

    for kind, cls, prefix, names in (
        ("relay", RelaySettings, "OUTBOX_RELAY_", RELAY_ENV),
        ("consumer", ConsumerSettings, "OUTBOX_CONSUMER_", CONSUMER_ENV),
    ):
        documented = _documented_settings(kind)
        fields = dataclasses.fields(cls)
        assert sorted(documented) == sorted(f.name for f in fields), kind
        for f in fields:
            variable, default = documented[f.name]
            assert variable == env_name(prefix, f.name, names), f.name
            if f.default is dataclasses.MISSING:
                continue  # read from the environment at construction (bootstrap, prefix)
            value = f.default
            expected = (
                f"{value.total_seconds() / 3600:g}"
                if isinstance(value, timedelta)
                else "none"
                if value is None
                else str(value)
            )
            assert default == expected, f"{kind} {f.name}: README says {default}, the code {expected}"
