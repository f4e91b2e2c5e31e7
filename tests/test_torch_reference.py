"""The PyTorch references are an independent oracle: their sizes come from their own copies of
the published rules, never from the library under test (issue #16)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import attention_jax.torch_reference as ref

REF_DIR = Path(ref.__file__).resolve().parent

# timm's SE width at rd_ratio=1/16, rd_divisor=8 (make_divisible(C / 16, 8, round_limit=0)):
# nearest multiple of 8, halves up, at least 8.
TIMM_SE_WIDTH = {8: 8, 64: 8, 128: 8, 192: 16, 200: 16, 208: 16, 256: 16, 320: 24, 512: 32,
                 1000: 64, 2048: 128}
# ECA-Net, official code: t = int(abs((log2(C) + 1) / 2)); k = t if t odd else t + 1.
ECA_KERNEL = {1: 1, 8: 3, 16: 3, 64: 3, 100: 3, 128: 5, 256: 5, 512: 5, 1024: 5, 2048: 7,
              8192: 7, 32768: 9}


@pytest.mark.parametrize("channels, width", sorted(TIMM_SE_WIDTH.items()))
def test_rd_is_timms_se_width(channels, width):
    assert ref.rd(channels) == width


def test_rd_other_ratios_and_divisor_one():
    assert ref.rd(64, 0.25) == 16 and ref.rd(200, 0.25) == 48  # 50 -> 48 (nearest)
    assert ref.rd(64, 1 / 16, 1) == 4 and ref.rd(200, 1 / 16, 1) == 12  # plain int(C * r)
    # timm's make_divisible with its default round_limit: never lose more than 10%.
    assert ref.make_divisible(20, 8) == 24 and ref.make_divisible(17, 8) == 16
    assert ref.make_divisible(9, 8) == 16  # 8 < 0.9 * 9 -> one divisor more
    assert ref.make_divisible(3, 8) == 8  # at least the divisor


@pytest.mark.parametrize("channels, k", sorted(ECA_KERNEL.items()))
def test_eca_kernel_size_is_the_papers(channels, k):
    assert ref.eca_kernel_size(channels) == k


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted(REF_DIR.glob("*.py")), ids=lambda p: p.name)
def test_references_import_nothing_of_the_library_under_test(path):
    """Only torch, numpy, the standard library, the references themselves and the extras
    helper: no ``attention_jax.functional`` (widths), registry, plans, linen or nnx."""
    allowed_own = ("attention_jax.torch_reference", "attention_jax._extras")
    for name in _imported_modules(path):
        if name == "attention_jax" or name.startswith("attention_jax."):
            assert name.startswith(allowed_own), f"{path.name} imports {name}"


def test_importing_without_torch_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import attention_jax.torch_reference\n"
            "except ImportError as e:\n    print('ERR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'ERR' in proc.stdout and 'pip install "attention-jax[bench]"' in proc.stdout, (
        proc.stdout)
