"""The package's import layering, read from the source (AST), not from what happens to load.

    linen | nnx      siblings: import functional, plans, _validation, _types and their own
                     package; never each other (nor flax.linen / flax.nnx respectively)
    plans            imports functional; never linen, nnx, models or flax
    functional       never plans, linen, nnx, models or flax
    models           a model file of one API never imports the other API's private names

Each rule is also run on small planted packages, so a rule that cannot fail is caught here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import attention_jax

ROOT = Path(attention_jax.__file__).parent
PKG = "attention_jax"
WRAPPER_DEPS = ("functional", "plans", "_validation", "_types")


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _is_module(name: str, root: Path, package: str) -> bool:
    if name != package and not name.startswith(package + "."):
        return False
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imports(path: Path, root: Path, package: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import in the file, relative ones resolved;
    ``from pkg import sub`` where ``sub`` is a submodule is reported as module ``pkg.sub``."""
    me = _module_name(path, root, package)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if _is_module(sub, root, package) or sub in ("flax.linen", "flax.nnx"):
                    out.append((sub, None))
                else:
                    out.append((mod, alias.name))
    return out


def _within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def _api(imps: list[tuple[str, str | None]], package: str) -> str | None:
    """The Flax API a module is written against, from what it imports."""
    mods = {m for m, _ in imps}
    if any(_within(m, "flax.nnx") or _within(m, f"{package}.nnx") for m in mods):
        return "nnx"
    if any(_within(m, "flax.linen") or _within(m, f"{package}.linen") for m in mods):
        return "linen"
    return None


def violations(root: Path, package: str) -> dict[str, list[str]]:
    """Rule name -> the violations found in the package at ``root``."""
    files = {_module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    found: dict[str, list[str]] = {k: [] for k in ("siblings", "plans", "functional", "models")}
    imps = {name: imports(path, root, package) for name, path in files.items()}
    for me, mine in imps.items():
        for mod, name in mine:
            private = name is not None and name.startswith("_") and not name.startswith("__")
            where = f"{me} imports {mod}" + (f".{name}" if name else "")
            for api, other in (("linen", "nnx"), ("nnx", "linen")):
                if not _within(me, f"{package}.{api}"):
                    continue
                own = _within(mod, f"{package}.{api}")
                if _within(mod, f"{package}.{other}") or _within(mod, f"flax.{other}"):
                    found["siblings"].append(where)
                elif _within(mod, package) and not own:
                    allowed = any(_within(mod, f"{package}.{d}") for d in WRAPPER_DEPS)
                    if mod == package and name in WRAPPER_DEPS:
                        allowed = True
                    if not allowed or private:
                        found["siblings"].append(where)
            for layer, banned in (("plans", ("linen", "nnx", "models")),
                                  ("functional", ("linen", "nnx", "models", "plans"))):
                if _within(me, f"{package}.{layer}") and (
                        any(_within(mod, f"{package}.{b}") for b in banned)
                        or _within(mod, "flax")):
                    found[layer].append(where)
            if _within(me, f"{package}.models") and private and mod in imps:
                mine_api, theirs = _api(mine, package), _api(imps[mod], package)
                if mine_api and theirs and mine_api != theirs:
                    found["models"].append(where)
    return found


REAL = violations(ROOT, PKG)


@pytest.mark.parametrize("rule", ["siblings", "plans", "functional"])
def test_package_layering(rule):
    assert REAL[rule] == []


def test_package_layering_models():
    assert REAL["models"] == []


def test_walker_sees_the_real_imports():
    """The walker reads what the files say (guards against a walker that finds nothing)."""
    nnx_ctx = {m for m, _ in imports(ROOT / "nnx" / "context.py", ROOT, PKG)}
    assert {"attention_jax.plans", "attention_jax.functional", "flax.nnx"} <= nnx_ctx
    lin = {m for m, _ in imports(ROOT / "linen" / "channel.py", ROOT, PKG)}
    assert {"attention_jax.functional", "attention_jax.plans", "flax.linen"} <= lin


# --- planted violations --------------------------------------------------------------------

CLEAN = {
    "__init__.py": "",
    "_types.py": "",
    "_validation.py": "",
    "functional/__init__.py": "import jax\n",
    "plans/__init__.py": "from pkg import functional as F\n",
    "linen/__init__.py": "import flax.linen as nn\nfrom pkg import functional as F\n"
                         "from pkg.plans import X\nfrom .layers import conv\n",
    "linen/layers.py": "import flax.linen as nn\n",
    "nnx/__init__.py": "from flax import nnx\nfrom pkg import plans, _types\n"
                       "from pkg._validation import check_nhwc\n",
    "models/__init__.py": "",
    "models/a_linen.py": "import flax.linen as nn\n_BN = 1\n",
    "models/a_nnx.py": "from flax import nnx\nfrom pkg.models.a_linen import A\n",
}

PLANTED = {
    "siblings": [("nnx/__init__.py", "from pkg.linen import layers\n"),
                 ("nnx/__init__.py", "from pkg.linen.layers import conv\n"),
                 ("nnx/__init__.py", "import flax.linen as nn\n"),
                 ("nnx/__init__.py", "from flax import linen\n"),
                 ("linen/layers.py", "from pkg import nnx\n"),
                 ("linen/layers.py", "from ..nnx import thing\n"),
                 ("linen/layers.py", "from pkg.models import a_linen\n"),
                 ("linen/layers.py", "from pkg.functional import _private\n")],
    "plans": [("plans/__init__.py", "from pkg.linen import layers\n"),
              ("plans/__init__.py", "from ..models import a_nnx\n"),
              ("plans/__init__.py", "from flax import nnx\n")],
    "functional": [("functional/__init__.py", "from pkg import plans\n"),
                   ("functional/__init__.py", "from pkg.nnx import X\n"),
                   ("functional/__init__.py", "import flax.linen\n")],
    "models": [("models/a_nnx.py", "from pkg.models.a_linen import _BN\n"),
               ("models/a_nnx.py", "from .a_linen import _BN\n")],
}


def _plant(tmp_path: Path, extra: tuple[str, str] | None) -> Path:
    root = tmp_path / "pkg"
    for rel, text in CLEAN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if extra:
        rel, text = extra
        (root / rel).write_text((root / rel).read_text() + text)
    return root


def test_clean_planted_package_passes(tmp_path):
    assert violations(_plant(tmp_path, None), "pkg") == {
        "siblings": [], "plans": [], "functional": [], "models": []}


@pytest.mark.parametrize("rule,plant", [(r, p) for r, ps in PLANTED.items() for p in ps],
                         ids=[f"{r}:{p[1].strip()}" for r, ps in PLANTED.items() for p in ps])
def test_planted_violation_is_caught(tmp_path, rule, plant):
    found = violations(_plant(tmp_path, plant), "pkg")
    assert found[rule], found
    assert all(not v for r, v in found.items() if r != rule), found
