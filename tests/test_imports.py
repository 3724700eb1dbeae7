"""The package's dependency rules, read from its source and checked in a fresh process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streamer"


def module_name(path: Path) -> str:
    """A module's name inside the package: `cli`, `uploader.tasks`, `uploader` (its
    __init__)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


MODULES = {module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def imports(module: str, top_level_only: bool = False) -> set[str]:
    """What `module` imports: project modules by their short name, others by their top
    package."""
    tree = MODULES[module]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                # `from streamer.uploader import process` imports the module `process`
                submodule = f"{node.module}.{alias.name}".removeprefix("streamer.")
                found.add(f"streamer.{submodule}" if submodule in MODULES else node.module)
    return {
        name.removeprefix("streamer.") if name.startswith("streamer.") else name.split(".")[0]
        for name in found
    }


def project_imports(module: str, top_level_only: bool = False) -> set[str]:
    return imports(module, top_level_only) & MODULES.keys()


def test_the_value_modules_import_nothing_of_the_project_but_each_other():
    values = {"messages", "mp4", "records", "layout", "digests"}
    for module in values:
        assert project_imports(module) <= values - {module}, module


def test_policy_decides_without_io():
    reached = reached_from("policy")
    io = {"lmdb", "minio", "urllib3", "inotify_simple", "prometheus_client", "socket"}
    assert not {name for m in reached for name in imports(m)} & io, reached


def reached_from(*starts: str) -> set[str]:
    """Every project module that `starts` import, directly or through others."""
    reached, todo = set(), list(starts)
    while todo:
        module = todo.pop()
        reached.add(module)
        todo += [m for m in project_imports(module) if m not in reached]
    return reached


def test_the_uploader_reaches_nothing_of_the_supervisor():
    """What both sides need (a file's head, its size) lives below both, in `fileio`: the
    uploader never loads the supervisor's inotify watcher, nor anything of its own."""
    uploader = [m for m in MODULES if m == "uploader" or m.startswith("uploader.")]
    reached = reached_from(*uploader)
    assert not {m for m in reached if m == "watcher" or m.split(".")[0] == "supervisor"}
    assert "inotify_simple" not in {name for m in reached for name in imports(m)}


def test_the_supervisor_loads_what_uploaders_use_before_it_forks():
    # `streamer run` imports the CLI, then the supervisor. Uploaders are forked from it, so
    # what they use is loaded once, there, and never again in each of them.
    loaded = loaded_by(
        "streamer.cli, streamer.supervisor.daemon",
        "m in ('minio', 'awscrt.checksums', 'streamer.chunkstore', 'streamer.uploader.process')",
    )
    assert loaded == str(
        ["awscrt.checksums", "minio", "streamer.chunkstore", "streamer.uploader.process"]
    )


def loaded_by(modules: str, which: str) -> str:
    """The modules, among those `which` selects, that importing `modules` loads, in a
    fresh process."""
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if {which}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    return loaded.stdout.strip()


def test_the_admin_commands_never_reach_the_supervisor():
    commands = [m for m in MODULES if m == "cli" or m.startswith("cli.")]
    reached = set().union(*(project_imports(m, top_level_only=True) for m in commands))
    assert not {m for m in reached if m.split(".")[0] in ("supervisor", "uploader")}
    [run] = [
        node
        for node in ast.walk(MODULES["cli.run"])
        if isinstance(node, ast.FunctionDef) and node.name == "run"
    ]
    lazy = {
        node.module
        for m in commands
        for node in ast.walk(MODULES[m])
        if isinstance(node, ast.ImportFrom) and node.module.startswith("streamer.supervisor")
    }
    in_run = {
        node.module
        for node in ast.walk(run)
        if isinstance(node, ast.ImportFrom) and node.module.startswith("streamer.supervisor")
    }
    assert lazy == in_run == {"streamer.supervisor.daemon"}, "only `run` starts the supervisor"


def test_the_command_loads_neither_the_s3_client_nor_the_metrics_library():
    """prometheus_client fixes its mode when first imported: `run` sets it up first."""
    loaded = loaded_by(
        "streamer.cli", "m.split('.')[0] in ('minio', 'urllib3', 'prometheus_client')"
    )
    assert loaded == "[]"


def private_names(tree: ast.Module) -> set[str]:
    """Names starting with one underscore that a module defines: functions, classes,
    attributes it assigns."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_module_reaches_into_another_s_private_names():
    owned = {module: private_names(tree) for module, tree in MODULES.items()}
    reaches = []
    for module, tree in MODULES.items():
        others = set().union(*(names for m, names in owned.items() if m != module))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in others - owned[module]
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                reaches.append(f"{module}.py:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamer"):
                reaches += [
                    f"{module}.py:{node.lineno} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert reaches == []


def test_no_module_reaches_into_a_library_s_private_names():
    """A library's private names change without notice. minio-py keeps its multipart
    calls private: chunkstore, the one seam to S3, is the only module that uses them."""
    allowed = {"os._exit", "self._client"}
    reaches = []
    for module, tree in MODULES.items():
        own = private_names(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
                and ast.unparse(node.value) not in ("self", "cls")
                and not (module == "chunkstore" and ast.unparse(node.value) in allowed)
                and ast.unparse(node) not in allowed
            ):
                reaches.append(f"{module}.py:{node.lineno} {ast.unparse(node)}")
    assert reaches == []


def test_no_two_classes_share_a_name_across_the_package():
    """One word, one thing: a class's name says which one it is wherever it is imported."""
    defined: dict[str, list[str]] = {}
    for module, tree in MODULES.items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(module)
    assert {name: where for name, where in defined.items() if len(where) > 1} == {}


TESTS = Path(__file__).resolve().parent


def test_every_module_has_its_test_file_which_names_it():
    """tests/test_<module>.py, or tests/integration/test_<module>.py for what only a server
    or a daemon can show; the file imports the module or names its path, which tells two
    modules of one name apart."""
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = path.relative_to(PACKAGE.parent)
        dotted = ".".join(relative.with_suffix("").parts)
        tested = [TESTS / f"test_{path.stem}.py", TESTS / "integration" / f"test_{path.stem}.py"]
        if not any(t.exists() and names(t, dotted, str(relative)) for t in tested):
            missing.append(str(relative))
    assert missing == []


def names(test: Path, dotted: str, path: str) -> bool:
    """Does `test` import the module `dotted` (or a name of it), or name its `path`?"""
    source = test.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == dotted or any(
                f"{node.module}.{alias.name}" == dotted for alias in node.names
            ):
                return True
        elif isinstance(node, ast.Import) and any(a.name == dotted for a in node.names):
            return True
    return path in source


def test_no_test_file_imports_another():
    """What several test files use is a helper module of its own (conftest.py, commands.py,
    sample_records.py, …): a test file is read alone."""
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from test_x import y`, and `from integration import test_x`
                imported = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            found += [
                f"{path.name}: {name}"
                for name in imported
                if name.split(".")[-1].startswith("test_")
            ]
    assert found == []
