"""The README's Architecture section stays true: every path it names exists, every module
of the package and every Rust source file is named in its concept -> file map, and the
layer diagram names every subpackage."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "hybridkv"
# Table columns after the concept: where their paths are relative to.
COLUMN_ROOTS = (PKG, ROOT / "rust", ROOT)
CODE = re.compile(r"`([^`]+)`")


def _section(text: str | None = None) -> str:
    text = (ROOT / "README.md").read_text() if text is None else text
    start = text.index("\n## Architecture\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _is_path(token: str) -> bool:
    return "/" in token and " " not in token and not token.startswith(("http", "redis:"))


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append(cells)
    assert rows and rows[0][0] == "Concept", "the concept -> file table is missing"
    return rows[1:]


def named_paths(section: str) -> list[tuple[str, Path]]:
    """(as written, resolved path) for every path the section names."""
    out: list[tuple[str, Path]] = []
    rows = _table_rows(section)
    assert len(rows) >= 10
    for cells in rows:
        assert len(cells) == 1 + len(COLUMN_ROOTS), cells
        # The concept column's paths are package paths, like the Python column's.
        for token in CODE.findall(cells[0]):
            if _is_path(token):
                out.append((token, PKG / token))
        for cell, root in zip(cells[1:], COLUMN_ROOTS, strict=True):
            for token in CODE.findall(cell):
                assert _is_path(token) or token.endswith((".py", ".pyi")), (
                    f"{token!r} in a file column is not a path"
                )
                out.append((token, root / token))
    without_diagram = re.sub(r"```mermaid\n.*?```", "", section, flags=re.S)
    prose = "\n".join(line for line in without_diagram.splitlines() if not line.startswith("|"))
    for token in CODE.findall(prose):
        if _is_path(token):
            out.append((token, ROOT / token))
    return out


def missing_paths(section: str) -> list[str]:
    missing = []
    for written, path in named_paths(section):
        ok = path.is_dir() if written.endswith("/") else path.exists()
        if not ok:
            missing.append(f"{written} ({path.relative_to(ROOT)})")
    return missing


def test_every_named_path_exists() -> None:
    missing = missing_paths(_section())
    assert not missing, "README names paths that do not exist: " + ", ".join(missing)


def _modules() -> list[Path]:
    py = [p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent == PKG]
    return sorted([*py, PKG / "_core.pyi", *(ROOT / "rust").glob("*/src/**/*.rs")])


def left_out_modules(section: str) -> list[str]:
    named = {path.resolve() for _, path in named_paths(section)}
    return [str(p.relative_to(ROOT)) for p in _modules() if p.resolve() not in named]


def test_every_module_is_named() -> None:
    left_out = left_out_modules(_section())
    assert not left_out, "modules missing from the README's concept map: " + ", ".join(left_out)


def test_diagram_names_every_subpackage() -> None:
    section = _section()
    match = re.search(r"```mermaid\n(.*?)```", section, re.S)
    assert match, "the layer diagram (mermaid) is missing"
    diagram = match.group(1)
    subpackages = sorted(p.parent.name for p in PKG.glob("*/__init__.py"))
    assert len(subpackages) >= 7
    for name in subpackages:
        assert f"{name}/" in diagram, name
    for layer in ("rust/bindings", "rust/core", "cli.py"):
        assert layer in diagram, layer


def test_the_checks_see_a_wrong_map() -> None:
    # Not vacuous: a renamed file is reported missing, and the module it named is then
    # reported left out; so is a file dropped from the map.
    section = _section()
    assert "`cache/manager.py`" in section and "`core/src/arena.rs`" in section
    renamed = section.replace("`cache/manager.py`", "`cache/kv_manager.py`")
    assert missing_paths(renamed) == ["cache/kv_manager.py (python/hybridkv/cache/kv_manager.py)"]
    assert left_out_modules(renamed) == ["python/hybridkv/cache/manager.py"]
    dropped = section.replace("`core/src/arena.rs`, ", "")
    assert missing_paths(dropped) == []
    assert left_out_modules(dropped) == ["rust/core/src/arena.rs"]
    assert "tests/no_such_dir/" in missing_paths(section + "\n`tests/no_such_dir/`\n")[0]
