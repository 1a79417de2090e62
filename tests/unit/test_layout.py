"""The package's shape: no import cycles between modules, and no class name defined twice."""

import ast
from collections import Counter
from pathlib import Path

import colocate

ROOT = Path(colocate.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(ROOT.rglob("*.py"))}


def top_level_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The colocate modules ``name`` imports when it is imported (not inside functions, and
    not under ``if TYPE_CHECKING:``)."""
    is_package = name in known and (ROOT.parent / name.replace(".", "/") / "__init__.py").exists()
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
    visit(tree.body)
    return {m for m in out if m in known and m != name}


def test_no_import_cycles():
    mods = modules()
    graph = {n: top_level_imports(n, t, set(mods)) for n, t in mods.items()}
    # Importing a.b.c imports a and a.b first: a package's __init__ that imports its own
    # submodule is not a cycle of the code, so parents are left out of the edges.
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                walk(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            walk(n)


def test_no_class_name_is_defined_twice():
    names = Counter()
    where: dict[str, list[str]] = {}
    for n, tree in modules().items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                names[node.name] += 1
                where.setdefault(node.name, []).append(n)
    twice = {k: where[k] for k, c in names.items() if c > 1}
    assert not twice, f"class names defined in several modules: {twice}"



# Where a class of colocate may inherit from another class of colocate, besides exceptions: a
# real kind of its base, never a mixin that works on the subclass's state.
KINDS = {("LazyArray", "StoredResult")}


def test_no_class_is_built_from_mixins():
    """A file is split by objects that are held, not by mixins working on another class's state
    (``Scheduler(StoreBook, Placing)`` or ``Connection(StoreClient)``, as they were)."""
    import builtins
    bases: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    for n, tree in modules().items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                # (a base named through a module, as cf.Future, is not colocate's)
                bases[node.name] = [b.id if isinstance(b, ast.Name) else ast.unparse(b)
                                    for b in node.bases]
                where[node.name] = n

    def is_exception(name: str) -> bool:
        if name in bases:
            return any(is_exception(b) for b in bases[name])
        return isinstance(getattr(builtins, name, None), type) and issubclass(
            getattr(builtins, name), BaseException) or name in {"BrokenExecutor"}

    mixed = [f"{where[c]}.{c}({b})" for c, bs in bases.items() for b in bs
             if b in bases and not is_exception(b) and (c, b) not in KINDS]
    assert not mixed, f"classes that inherit from colocate classes: {mixed}"
