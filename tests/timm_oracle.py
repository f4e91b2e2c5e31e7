"""timm as the test oracle, imported without torchvision, PIL transforms or a network.

timm 1.0.31 (installed with ``pip install --no-deps timm``) imports two things it cannot have
here: ``torchvision.ops.misc.FrozenBatchNorm2d`` (torchvision's wheel does not load beside the
CPU torch), used only by timm's layer-freezing helpers, and ``timm.data`` (its transforms
import torchvision), of which the model files need only the normalisation constants.
``import_timm`` installs a stand-in for each in ``sys.modules`` (a ``FrozenBatchNorm2d`` that
refuses to be built, and a ``timm.data`` holding exactly ``timm/data/constants.py``) and imports
timm. Models are built with ``pretrained=False`` only: nothing downloads (huggingface_hub is not
installed either).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types


class _FrozenBatchNorm2dStandIn:
    """Stand-in for torchvision's FrozenBatchNorm2d: importable, never built by our models."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("tests.timm_oracle: torchvision's FrozenBatchNorm2d is a "
                                  "stand-in here (timm's freeze helpers are not used)")


def _install_stand_ins() -> None:
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        misc = types.ModuleType("torchvision.ops.misc")
        misc.FrozenBatchNorm2d = _FrozenBatchNorm2dStandIn
        tv.ops, ops.misc = ops, misc
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops,
                            "torchvision.ops.misc": misc})
    if "timm.data" not in sys.modules:
        spec = importlib.util.find_spec("timm")
        if spec is None:
            raise ImportError("tests.timm_oracle: timm is not installed (pip install --no-deps "
                              "timm==1.0.31)")
        path = os.path.join(spec.submodule_search_locations[0], "data", "constants.py")
        cspec = importlib.util.spec_from_file_location("timm.data.constants", path)
        constants = importlib.util.module_from_spec(cspec)
        cspec.loader.exec_module(constants)
        data = types.ModuleType("timm.data")
        data.__path__ = []  # a package, so `timm.data.constants` resolves
        for name in dir(constants):
            if name.isupper():
                setattr(data, name, getattr(constants, name))
        data.constants = constants
        sys.modules.update({"timm.data": data, "timm.data.constants": constants})


@functools.cache
def import_timm():
    """The ``timm`` package, importable here (see the module docstring)."""
    _install_stand_ins()
    import timm

    return timm


def create(name: str, **kwargs):
    """``timm.create_model(name, pretrained=False, **kwargs)`` in eval mode."""
    return import_timm().create_model(name, pretrained=False, **kwargs).eval()
