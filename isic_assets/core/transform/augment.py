"""The declared, seeded augmentation pipeline that training code and ``balanced_splits`` share.

The pipeline is data (a list of ``{"name": <albumentations class>, "p": ..., **params}`` dicts), so
it can live in Dagster config or a training config file and be recorded next to the data it made.
docs/PERFORMANCE.md 12.6: augmentation normally runs online in the training loader; the only offline use
is ``augment_file``, which ``balanced_splits`` calls to oversample the minority class of the train
split (never validation/test, never before the split).

Seeding, checked by running albumentations 2.0.8: ``A.Compose(..., seed=s)`` is reproducible, but it
hands the *same* seed to every child transform, so each child draws an identical random stream:
all transforms with the same ``p`` fire together or not at all (with the five p=0.5 defaults, 4 of
8 seeds left the image untouched and the other 4 applied all five), and their random parameters
are correlated. ``build_augmentation`` therefore rewires the Compose and its children onto one
shared generator pair seeded with ``s`` (``Compose.set_random_state``): still reproducible, now
independent draws. Consequences: a freshly built pipeline with the same seed gives the same result
for the same image; each further call on the same instance advances the shared stream (a
reproducible *sequence*, as a training loader wants); calling ``set_random_seed`` on the returned
Compose would bring the correlation back, so rebuild instead. Forked data-loader workers inherit
the same generator state and would repeat each other's augmentations: build one pipeline per
worker with a worker-specific seed (e.g. in the loader's ``worker_init_fn``).
"""

from __future__ import annotations

import copy
import inspect
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# albumentations 2.0.x asks PyPI for a newer version on import (2 s timeout) unless this is set;
# a pipeline should not phone home, and offline it only adds import latency.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np

from ..atomic import atomic_write_bytes
from .image_ops import ImageDecodeError, decode_image, encode_jpeg

if TYPE_CHECKING:
    import albumentations as A

AugmentationSpec = Sequence[Mapping[str, Any]]


class AugmentationSpecError(ValueError):
    """A spec entry that cannot become an albumentations transform; the message names the entry."""


# Dermoscopy has no canonical orientation, so flips, quarter turns and small rotations are free
# label-preserving variety; scale stays mild (lesion size is a feature); colour jitter stays mild
# (colour is diagnostic) and hue barely moves. Affine fills with black, like the pad border and the
# dermoscope vignette. Read-only: copy before editing.
DEFAULT_AUGMENTATIONS: list[dict[str, Any]] = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "VerticalFlip", "p": 0.5},
    {"name": "RandomRotate90", "p": 0.5},
    {
        "name": "Affine",
        "p": 0.5,
        "rotate": (-20, 20),
        "scale": (0.9, 1.1),
        "translate_percent": (-0.05, 0.05),
    },
    {"name": "ColorJitter", "p": 0.5, "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.02},
]


def build_augmentation(spec: AugmentationSpec | None = None, seed: int = 0) -> A.Compose:
    """An ``A.Compose`` for ``spec`` (default ``DEFAULT_AUGMENTATIONS``), seeded with ``seed``.

    Every entry is validated here, not at the first image: an unknown transform name, a parameter
    the transform does not take, or a value albumentations rejects raises ``AugmentationSpecError``
    (a ``ValueError``) naming the entry's index and name. Lists in parameters are turned into
    tuples, so a spec that went through JSON/YAML builds the same pipeline.
    """
    entries = DEFAULT_AUGMENTATIONS if spec is None else spec
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise AugmentationSpecError(
            f"augmentation spec must be a list of dicts, got {type(entries).__name__}"
        )
    import albumentations as A  # 1-2 s of imports, paid only by runs that augment

    transforms = [_build_transform(index, entry) for index, entry in enumerate(entries)]
    compose = A.Compose(transforms, seed=seed)
    # One generator pair shared by all transforms, not one identical copy each (module docstring).
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return compose


def augment_image(img: np.ndarray, spec: AugmentationSpec | None = None, seed: int = 0) -> np.ndarray:
    """``img`` (RGB uint8) augmented by ``spec``; the same (img, spec, seed) always gives the same array."""
    return build_augmentation(spec, seed)(image=img)["image"]


def augment_file(
    src: Path, dst: Path, seed: int, spec: AugmentationSpec | None = None, quality: int = 95
) -> Path:
    """Write an augmented JPEG copy of ``src`` to ``dst`` atomically and return ``dst``.

    For oversampling the minority class of the train split: ``seed`` should differ per copy (e.g.
    derived from the image id and copy number) so the copies differ but a re-run rewrites the same
    bytes. Raises ``ImageDecodeError`` naming ``src`` if it cannot be read or decoded.
    """
    src, dst = Path(src), Path(dst)
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{src}: cannot read: {exc}") from exc
    try:
        img = decode_image(data)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{src}: {exc}") from exc
    atomic_write_bytes(dst, encode_jpeg(augment_image(img, spec, seed), quality))
    return dst


def _build_transform(index: int, entry: Mapping[str, Any]) -> A.BasicTransform:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise AugmentationSpecError(
            f"augmentation entry {index}: expected a dict with a 'name', got {entry!r}"
        )
    import albumentations as A  # see build_augmentation

    name = entry["name"]
    label = f"augmentation entry {index} ({name})"
    cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
        raise AugmentationSpecError(f"{label}: unknown albumentations transform {name!r}")
    params = {key: _tuples(value) for key, value in entry.items() if key != "name"}
    accepted = _accepted_parameters(cls)
    unknown = sorted(set(params) - accepted) if accepted is not None else []
    if unknown:
        raise AugmentationSpecError(
            f"{label}: unknown parameter(s) {unknown}; {name} takes {sorted(accepted or ())}"
        )
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise AugmentationSpecError(f"{label}: invalid parameters {params}: {exc}") from exc


def _accepted_parameters(cls: type) -> set[str] | None:
    """Keyword names ``cls`` accepts, or None when it takes **kwargs (then albumentations checks)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {name for name in parameters if name != "self"}


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else copy.deepcopy(value)
