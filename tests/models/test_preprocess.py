"""preprocess against timm's evaluation transform: torchvision's Resize/CenterCrop rules on a
PIL image (torchvision's Resize calls PIL's resize for PIL images; torchvision itself does not
load beside the CPU torch, so its size and crop arithmetic is written out here), ToTensor and
Normalize, on the photos scikit-image ships."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from attention_jax.models import PretrainedConfig, preprocess, pretrained_config

PHOTOS = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea")}
_PIL = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def timm_eval_transform(img: np.ndarray, cfg: PretrainedConfig) -> np.ndarray:
    """timm's transforms_imagenet_eval (crop_mode 'center', square size) with PIL."""
    size = cfg.input_size[-1]
    scale = math.floor(size / cfg.crop_pct)
    h, w = img.shape[:2]
    # torchvision.transforms.functional._compute_resized_output_size with an int size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = scale, int(scale * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    pil = Image.fromarray(img)
    if (new_h, new_w) != (h, w):
        pil = pil.resize((new_w, new_h), _PIL[cfg.interpolation])
    a = np.asarray(pil).astype(np.float32)
    # torchvision.transforms.functional.center_crop
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    a = a[top:top + size, left:left + size] / 255.0
    return (a - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)


@pytest.mark.parametrize("name", ["resnet50", "resnest50d", "gcresnet50t"])
def test_matches_timms_eval_transform(name):
    """bicubic/crop 0.95, bilinear/0.875, 256 px/0.9: within one unit of 255 (PIL's fixed-point
    weights), in at most 0.5% of the values."""
    cfg = pretrained_config(name)
    out = np.asarray(preprocess(list(PHOTOS.values()), name))
    size = cfg.input_size[-1]
    assert out.shape == (3, size, size, 3) and out.dtype == np.float32
    unit = 1.0 / 255 / np.asarray(cfg.std, np.float32)
    for got, img in zip(out, PHOTOS.values(), strict=True):
        want = timm_eval_transform(img, cfg)
        off = np.abs(got - want) / unit
        assert off.max() <= 1.0 + 1e-3, off.max()
        assert (off > 0.5).mean() <= 5e-3


def test_batch_single_and_config():
    img = PHOTOS["chelsea"]
    one = preprocess(img, "resnet18")
    assert one.shape == (1, 224, 224, 3)
    batch = preprocess(np.stack([img, img[:, ::-1]]), pretrained_config("resnet18"))
    np.testing.assert_array_equal(batch[0], one[0])
    # An image already at the resize size is only cropped: exact.
    cfg = PretrainedConfig("x", None, input_size=(3, 8, 8), crop_pct=0.5, interpolation="bilinear")
    small = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    want = (small[4:12, 4:12] / 255.0 - np.asarray(cfg.mean)) / np.asarray(cfg.std)
    np.testing.assert_allclose(preprocess(small, cfg)[0], want, rtol=1e-6, atol=1e-6)


def test_bad_input():
    img = PHOTOS["coffee"]
    with pytest.raises(ValueError, match=r"preprocess: images\[0\] must be a uint8 array "
                                         r"\(pixel values 0\.\.255\), got float32"):
        preprocess(img.astype(np.float32), "resnet50")
    with pytest.raises(ValueError, match=r"preprocess: images\[1\] must be an \(H, W, 3\) RGB "
                                         r"image, got shape \(4, 4, 4\)"):
        preprocess([img, np.zeros((4, 4, 4), np.uint8)], "resnet50")
    with pytest.raises(ValueError, match=r"preprocess: images must be an \(H, W, 3\) image, an "
                                         r"\(N, H, W, 3\) batch"):
        preprocess(jnp.zeros((4, 4), jnp.uint8), "resnet50")
    with pytest.raises(ValueError, match=r"pretrained_config: name must be one of .*got 'cnn'"):
        preprocess(img, "cnn")
    with pytest.raises(ValueError, match=r"preprocess: config\.input_size must be \(3, S, S\)"):
        preprocess(img, PretrainedConfig("x", None, input_size=(3, 224, 256)))
    with pytest.raises(ValueError, match=r"preprocess: images must be at least one image"):
        preprocess([], "resnet50")
