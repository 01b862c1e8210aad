"""Dependencies point one way (scripts -> cli -> experiment -> methods -> training -> data/models/measure ->
base), the package has no import circle, and --help never imports the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "multisource"
PROJECT_ROOT = PACKAGE.parent
# Higher number = higher layer. A module may import its own layer or lower ones, never a higher one.
LAYERS = {"__main__": 6, "cli": 5, "experiment": 4, "methods": 3, "training": 2, "data": 1, "models": 1, "measure": 1}
BASE = 0  # registry, config, options, executors, paths, utils


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], BASE) if len(parts) > 1 else BASE


def imports(path: Path) -> set[str]:
    """Package modules ``path`` imports, at module level and inside functions alike."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.startswith("multisource") and n != me}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {t for t in imports(p) if t in files} for m, p in files.items()}


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                    for m, targets in graph().items() for t in targets
                    if layer(t) > layer(m) and not t == "multisource")
    assert not upward, "\n".join(upward)


def test_the_package_has_no_import_circle():
    g = {m: {t for t in ts if not (PACKAGE.parent / (t.replace(".", "/") + "/__init__.py")).is_file()}
         for m, ts in graph().items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack
                               else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    assert not circles, "\n".join(circles)


def test_only_the_commands_that_build_data_import_the_build_side():
    """data/ has a read side (registry, card, loaders, packed cache reader) and a build side (data/build: builders,
    importer, cache writer). Reading a built dataset, training and running methods never load a builder; the
    commands (cli) build, and the settings loader knows the build stages' settings classes."""
    build = "multisource.data.build"
    importers = sorted(m for m, targets in graph().items()
                       if not m.startswith(build) and any(t == build or t.startswith(build + ".") for t in targets))
    assert importers and all(m.startswith("multisource.cli.") or m == "multisource.experiment.settings"
                             for m in importers), importers
    assert {"multisource.data.loaders", "multisource.data.packed"} <= set(graph())  # the read side is where it was


def test_the_checker_resolves_relative_imports_and_ranks_layers():
    """The checker itself: relative imports resolve to package modules, and layers rank as documented."""
    found = imports(PACKAGE / "training" / "source.py")
    assert "multisource.training.start" in found and "multisource.options" in found
    assert layer("multisource.experiment.runner") > layer("multisource.training.source") > layer("multisource.options")


def test_help_imports_no_heavy_library():
    """Every entry script's --help runs without importing torch, Lightning, timm or PEFT (seconds here)."""
    scripts = sorted(str(p) for folder in ("experiments", "baseline_training", "preprocessing")
                     for p in (PROJECT_ROOT / folder).rglob("*.py"))
    code = (
        "import runpy, sys\n"
        f"for script in {scripts!r}:\n"
        "    sys.argv = [script, '--help']\n"
        "    try:\n"
        "        runpy.run_path(script, run_name='__main__')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (script, exc.code)\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'timm', 'peft', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    assert len(scripts) > 20


def test_console_command_lists_and_dispatches(capsys):
    from multisource.cli.main import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("preprocess NAME", "train-all", "sweep", "summarize", "demo", "generate"))
    assert main(["nonsense"]) == 2 and "unknown command 'nonsense'" in capsys.readouterr().err
    assert main(["preprocess", "mnist"]) == 2
    from multisource.data.datasets import DATASETS

    for name in DATASETS.list():  # every dataset's registry entry names the command that builds it
        with pytest.raises(SystemExit) as done:
            main(["preprocess", name, "--help"])
        assert done.value.code == 0 and "--output_dir" in capsys.readouterr().out, name


def test_generated_files_equal_the_registries():
    """Wrapper scripts and the method flag table on disk are exactly what `multisource generate` writes."""
    from multisource.cli.generated import differences, method_flag_table, load_flag_table

    assert differences() == []
    assert load_flag_table() == method_flag_table()
