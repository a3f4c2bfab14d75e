"""Import layering: the model is pure (torch/torchvision only); nothing imports the CLI."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "refinemask_cli"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level >= 1:
                names.add("." * node.level + (node.module or ""))
    return names


def test_model_is_pure():
    allowed = {"torch", "torchvision", "__future__", "typing", "collections", "dataclasses", "math", "copy"}
    for f in (PKG / "model").glob("*.py"):
        bad = {n for n in imports_of(f) if not n.startswith(".") and n not in allowed}
        assert not bad, f"{f.name} imports {bad}"
        assert not any(n.startswith("..") for n in imports_of(f)), f"{f.name} reaches outside model/"
        text = f.read_text()
        assert "print(" not in text and "open(" not in text, f"{f.name} does IO"


def test_nothing_imports_cli_or_console():
    for f in PKG.rglob("*.py"):
        if f.name in ("cli.py", "console.py"):
            continue
        names = imports_of(f)
        assert not any(n.rstrip(".").endswith(("cli", "console")) for n in names), f"{f} imports the CLI layer"
        assert "rich" not in names and "click" not in names, f"{f} uses rich/click outside the CLI"
