"""API contract: keyword-only options, docstrings with shapes, nothing private exported."""

import dataclasses
import inspect
import re

import pytest

import attention_jax as aj
from attention_jax import functional, linen, nnx, plans

PACKAGES = {"attention_jax": aj, "functional": functional, "linen": linen, "nnx": nnx}
SHAPE = re.compile(r"\((N|B|\.\.\.|batch)[^)]*\)|\(N,|shape")


def _public(pkg):
    return [(name, getattr(pkg, name)) for name in pkg.__all__]


@pytest.mark.parametrize("pkg_name", PACKAGES)
def test_all_is_public_and_resolves(pkg_name):
    pkg = PACKAGES[pkg_name]
    assert len(set(pkg.__all__)) == len(pkg.__all__), "duplicate names in __all__"
    for name in pkg.__all__:
        assert not name.startswith("_"), name
        assert hasattr(pkg, name), name


FUNCTIONS = [(n, o) for n, o in _public(functional) if inspect.isfunction(o)]
CLASSES = [(f"{p}.{n}", o) for p, pkg in (("linen", linen), ("nnx", nnx))
           for n, o in _public(pkg) if inspect.isclass(o)]


@pytest.mark.parametrize("name,fn", FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_function_options_are_keyword_only(name, fn):
    for p in inspect.signature(fn).parameters.values():
        if p.default is not inspect.Parameter.empty:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: option {p.name} positional"


@pytest.mark.parametrize("name,fn", FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_function_docstring_states_shapes(name, fn):
    doc = inspect.getdoc(fn) or ""
    assert doc, f"{name} has no docstring"
    assert "Returns:" in doc, f"{name}: docstring lacks Returns:"
    if inspect.signature(fn).parameters:
        assert "Args:" in doc, f"{name}: docstring lacks Args:"
    returns = doc.split("Returns:", 1)[1]
    if not re.search(r"\ban int\b|\bcallable\b", returns, re.IGNORECASE):
        assert SHAPE.search(doc), f"{name}: docstring states no shape"


@pytest.mark.parametrize("name,cls", CLASSES, ids=[n for n, _ in CLASSES])
def test_module_docstring_and_signature(name, cls):
    doc = inspect.getdoc(cls) or ""
    assert doc and SHAPE.search(doc), f"{name}: class docstring must state shapes"
    if name.startswith("nnx."):
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        for p in params:
            if p.default is not inspect.Parameter.empty or p.name == "rngs":
                assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p.name} positional"
    else:
        call = inspect.signature(cls.__call__).parameters
        for p in list(call.values())[1:]:
            if p.default is not inspect.Parameter.empty:
                assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p.name} positional"


def test_registered_classes_exist_in_both_apis_with_same_options():
    for reg in aj.list_attention():
        lin, nn_cls = (aj.get_attention_class(reg, api=a) for a in ("linen", "nnx"))
        assert lin.__name__ == nn_cls.__name__
        lin_fields = set(lin.__dataclass_fields__) - {"parent", "name"}
        nnx_params = set(inspect.signature(nn_cls.__init__).parameters) - {"self", "rngs"}
        assert lin_fields == nnx_params, (reg, lin_fields ^ nnx_params)
        call = inspect.signature(lin.__call__).parameters
        assert "train" in call and call["train"].kind is inspect.Parameter.KEYWORD_ONLY, reg


FRAMEWORK_FIELDS = {"dtype", "param_dtype", "precision", "parent", "name"}
MODULE_CLASSES = [n for n, o in _public(linen) if inspect.isclass(o)]


def test_plans_all_is_public_and_resolves():
    assert len(set(plans.__all__)) == len(plans.__all__)
    for name in plans.__all__:
        assert not name.startswith("_") and hasattr(plans, name), name


@pytest.mark.parametrize("name", MODULE_CLASSES)
def test_every_module_has_a_plan_with_its_options(name):
    """Each linen/nnx mechanism has ``<Name>Plan``, a frozen dataclass whose ``create`` takes
    exactly the module's options (framework fields aside), keyword-only, with the same
    defaults, plus ``fn`` (the name in error messages, defaulting to the module's)."""
    plan = getattr(plans, f"{name}Plan")
    assert dataclasses.is_dataclass(plan) and plan.__dataclass_params__.frozen
    assert inspect.getdoc(plan) and inspect.getdoc(plan.create)
    params = inspect.signature(plan.create).parameters
    assert params["fn"].default == name and params["fn"].kind is inspect.Parameter.KEYWORD_ONLY
    fields = {f: getattr(getattr(linen, name), f)
              for f in getattr(linen, name).__dataclass_fields__ if f not in FRAMEWORK_FIELDS
              and hasattr(getattr(linen, name), f)}
    required = [f for f in getattr(linen, name).__dataclass_fields__
                if f not in FRAMEWORK_FIELDS and f not in fields]
    options = {k: p for k, p in params.items() if k != "fn"}
    assert set(options) == set(fields) | set(required), name
    for k, p in options.items():
        if k in required:
            assert p.default is inspect.Parameter.empty, (name, k)
        else:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, k)
            assert p.default == fields[k], (name, k, p.default, fields[k])
