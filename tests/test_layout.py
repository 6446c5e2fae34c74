"""The package stack, checked on the source: `supernet/` (spec and model) at the bottom, `latency_lut/` above it,
`nas/` on top; nothing lower imports anything higher. Tests and benchmarks take from an entry point only its
`run`, `main` and config schema; every other helper comes from a library module."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"supernet": 0, "latency_lut": 1, "nas": 2}
ENTRY_POINTS = {
    f"nas.{m}"
    for m in ("build_lut", "validate_lut", "train_supernet", "slim", "train", "export", "profile", "pipeline")
} | {"nas.data.__main__"}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, at any depth (lazy imports inside functions count too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_imports_parse_the_way_the_checks_assume():
    """The checks below see through aliases, lazy imports and multi-name imports (else they could pass vacuously)."""
    src = ROOT / "nas" / "workflow.py"
    found = imports(src)
    assert ("latency_lut.build", ["BuildLUTConfig", "build_lut"]) in found  # a lazy import inside a function
    assert any(m == "supernet.files" for m, _ in found)


@pytest.mark.parametrize("package", ["supernet", "latency_lut"])
def test_nothing_lower_imports_anything_higher(package):
    level = LAYERS[package]
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = [
        f"{f.relative_to(ROOT)} imports {mod}"
        for f in files
        for mod, _ in imports(f)
        if LAYERS.get(mod.split(".")[0], -1) > level
    ]
    assert not bad, bad


def test_tests_and_benchmarks_take_only_run_main_and_schemas_from_entry_points():
    files = sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    bad = []
    for f in files:
        for mod, names in imports(f):
            if mod in ENTRY_POINTS:
                bad += [f"{f.name}: {mod}.{n}" for n in names if n not in ("run", "main") and not n.endswith("Config")]
    assert not bad, bad


CLI_HELPERS = {"run", "main", "parse_args", "pick_inputs", "newest"}  # the command line's own work


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_entry_points_define_only_run_main_and_argument_handling(module):
    """An entry point parses, composes, calls one library function and prints: what a library user needs lives
    in a library module, importable and tested on its own."""
    path = ROOT / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    defined = {d for d in defined if not d.endswith("Config")}  # a command's config schema may live beside it
    assert defined <= CLI_HELPERS, f"{path.relative_to(ROOT)} defines {sorted(defined - CLI_HELPERS)}"
