"""The README's Python examples run as written (no stale examples).

The pretrained-backbone example reads ``seresnet50.safetensors``, the file the README tells the
user to make with timm. The test writes a file of that name in a scratch directory: a timm-format
state dict of random weights (``to_timm_state_dict`` of a fresh model), with the example's model
name swapped for the smaller ``resnet18`` so the run stays short; loading it strictly proves the
example's calls fit together.
"""

import pathlib
import re

import jax
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
STAND_IN = "resnet18"


def _write_checkpoint(directory: pathlib.Path) -> None:
    from attention_jax.interop import save_state_dict_file, to_timm_state_dict
    from attention_jax.models import create_model

    model = create_model(STAND_IN)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"),
                                    np.zeros(x.shape, x.dtype))
    save_state_dict_file(to_timm_state_dict(variables, STAND_IN),
                         directory / "seresnet50.safetensors")


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "README has no python example"
    _write_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        if "seresnet50" in block:
            block = block.replace('"seresnet50"', f'"{STAND_IN}"')
        namespace = {"__name__": "readme"}
        exec(compile(block, "README.md", "exec"), namespace)
        if "logits" in namespace:  # the pretrained-backbone example
            from attention_jax.interop import load_state_dict_file

            assert namespace["logits"].shape == (2, 1000)
            assert np.isfinite(np.asarray(namespace["logits"])).all()
            # The export is the file it loaded, key for key and bit for bit.
            original = load_state_dict_file("seresnet50.safetensors")
            assert set(namespace["state_dict"]) == set(original)  # (a file stores keys sorted)
            for key, value in original.items():
                np.testing.assert_array_equal(namespace["state_dict"][key], value)
