"""Imports flow one way (docs/architecture.md):

    cli -> crashrun / nbd / linuxguest / trace viewer -> devices -> block -> machine -> trace

A module may import its own layer and the layers below it, never one above: the crash
engine in block/ must not boot guests, the machine must not know the controllers.  The
check reads every module's import statements (also the lazy ones inside functions), so
it fails the moment an import goes the wrong way."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "blockbed"

# Longest dotted prefix wins.  Higher number = higher layer.
RANKS = {
    "blockbed.trace": 0,
    "blockbed.nbd.protocol": 0,        # wire constants and codecs, imports nothing of ours
    "blockbed.machine": 1,
    "blockbed.block": 2,
    "blockbed.devices": 3,
    "blockbed.trace_decode": 3,        # decodes device structures for trace events
    "blockbed.trace_decode_scsi": 3,
    "blockbed.trace_decode_ahci": 3,
    "blockbed.trace_decode_virtio": 3,
    "blockbed.nbd": 4,
    "blockbed.crashrun": 4,
    "blockbed.linuxguest": 4,
    "blockbed.tracereader": 4,
    "blockbed.traceview": 4,
    "blockbed.tracetimeline": 4,
    "blockbed.pictures": 4,
    "blockbed.cli": 5,
    "blockbed.__main__": 5,
    "blockbed": 5,
}

# (importing module, imported module): reasons recorded in docs/architecture.md.
ALLOWED = {
    # QEMU's pc always has the PIIX3 IDE function 00:01.1; the board adds it (lazily).
    ("blockbed.machine.board", "blockbed.devices.ide"),
}


def rank(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in RANKS:
            return RANKS[key]
    raise KeyError(module)


def module_name(path: Path, root: Path = PKG.parent) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str, root: Path) -> bool:
    p = root.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports_of(path: Path, root: Path = PKG.parent) -> set[str]:
    """Every blockbed module ``path`` imports; ``from X import y`` counts as X.y when y is
    a module, else as X."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("blockbed"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("blockbed"):
                target = node.module
            else:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}" if target else a.name
                out.add(sub if _is_module(sub, root) else target)
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in MODULES if _safe_rank(module_name(p)) is None]
    assert not missing, f"add these to RANKS: {missing}"


def _safe_rank(m: str):
    try:
        return rank(m)
    except KeyError:
        return None


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_flow_downwards(path):
    me = module_name(path)
    bad = sorted(t for t in imports_of(path)
                 if _safe_rank(t) is not None and rank(t) > rank(me) and (me, t) not in ALLOWED)
    assert not bad, f"{me} (layer {rank(me)}) imports a higher layer: {bad}"


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """Negative control: a lazy relative import of a higher layer inside a function is
    found and fails the rule."""
    crash = tmp_path / "blockbed" / "block" / "crash"
    (tmp_path / "blockbed" / "devices").mkdir(parents=True)
    crash.mkdir(parents=True)
    (tmp_path / "blockbed" / "devices" / "attach.py").write_text("")
    (crash / "x.py").write_text("def f():\n    from ...devices.attach import controller_module\n"
                                "from . import states\n")
    (crash / "states.py").write_text("")
    found = imports_of(crash / "x.py", tmp_path)
    assert found == {"blockbed.devices.attach", "blockbed.block.crash.states"}
    me = module_name(crash / "x.py", tmp_path)
    assert [t for t in found if rank(t) > rank(me)] == ["blockbed.devices.attach"]
