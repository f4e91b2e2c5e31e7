"""Classify the photos scikit-image bundles with a pretrained timm backbone, in JAX.

    python examples/classify.py --model seresnet50 --checkpoint seresnet50.safetensors

Loads the timm checkpoint you supply (``.safetensors``; ``.pth``/``.bin`` when torch is
installed) into ``attention_jax.models.create_model(model)``, prepares astronaut, coffee and
chelsea as timm's evaluation transform does (``preprocess``) and prints each photo's top-5
ImageNet classes. Nothing is downloaded: without ``--checkpoint`` it prints how to get the file.
Class names come from ``--labels`` (1000 lines, ImageNet-1k order) or, if timm is installed,
its bundled synset list; otherwise class indices are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea")


def how_to_get(model: str) -> str:
    """What to supply, and how to make it with timm, for ``model``."""
    from attention_jax.models import pretrained_config

    cfg = pretrained_config(model)
    weights = (f"timm's {model}.{cfg.tag} weights (ImageNet-1k top-1 {cfg.top1:.2f}% at "
               f"{cfg.input_size[-1]} px)" if cfg.top1 is not None
               else f"weights for {model} (timm publishes none for this name: train or convert "
                    f"your own)")
    file = f"{model}.safetensors"
    return (
        f"examples/classify.py needs --checkpoint: a state-dict file of {weights}. attention-jax "
        f"never downloads; make the file once, in any Python with internet access:\n\n"
        f"    pip install timm safetensors\n"
        f"    python -c \"import timm, safetensors.torch; "
        f"m = timm.create_model('{model}', pretrained=True); "
        f"safetensors.torch.save_file(m.state_dict(), '{file}')\"\n\n"
        f"then run:\n\n"
        f"    python examples/classify.py --model {model} --checkpoint {file}\n\n"
        f"(a .pth/.bin state dict, e.g. torch.save(m.state_dict(), ...), also loads when torch "
        f"is installed here).")


def imagenet_labels(path: str | None) -> list[str] | None:
    """1000 class names: from ``path``, else from timm's bundled lists, else None."""
    if path:
        names = pathlib.Path(path).read_text().splitlines()
        if len(names) != 1000:
            raise SystemExit(f"--labels must have 1000 lines, got {len(names)} in {path}")
        return names
    spec = importlib.util.find_spec("timm")  # read its data files without importing timm
    if spec is None or not spec.submodule_search_locations:
        return None
    info = pathlib.Path(spec.submodule_search_locations[0]) / "data" / "_info"
    try:
        synsets = (info / "imagenet_synsets.txt").read_text().split()
        lemmas = dict(line.split("\t", 1) for line in
                      (info / "imagenet_synset_to_lemma.txt").read_text().splitlines() if line)
    except OSError:
        return None
    return [lemmas.get(s, s) for s in synsets]


def main(argv: list[str] | None = None) -> int:
    from attention_jax.interop import timm_model_names

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="seresnet50", choices=timm_model_names())
    p.add_argument("--checkpoint", help="timm state-dict file (.safetensors, .pth, .bin)")
    p.add_argument("--labels", help="ImageNet-1k class names, one per line (optional)")
    p.add_argument("--api", choices=("linen", "nnx"), default="linen")
    args = p.parse_args(argv)
    if not args.checkpoint:
        print(how_to_get(args.model), file=sys.stderr)
        return 2

    import jax
    import skimage.data
    from flax import nnx

    from attention_jax import load_linen_variables
    from attention_jax.interop import load_state_dict_file, load_timm_state_dict
    from attention_jax.models import create_model, preprocess

    variables = load_timm_state_dict(args.model, load_state_dict_file(args.checkpoint))
    images = [getattr(skimage.data, name)() for name in PHOTOS]
    x = preprocess(images, args.model)
    if args.api == "linen":
        logits = jax.jit(create_model(args.model).apply)(variables, x)
    else:  # build without random init (eval_shape), then take the checkpoint's values
        model = nnx.eval_shape(lambda: create_model(args.model, api="nnx", rngs=nnx.Rngs(0)))
        load_linen_variables(model, variables)
        model.eval()
        logits = nnx.jit(lambda m, x: m(x))(model, x)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    labels = imagenet_labels(args.labels)
    for name, p_img in zip(PHOTOS, probs, strict=True):
        print(f"{name}:")
        for k in np.argsort(-p_img)[:5]:
            label = labels[k] if labels else f"class {k}"
            print(f"  {p_img[k]:6.1%}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
