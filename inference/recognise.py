"""Which architecture and modality a model file is, from its name or its layers.

Names: ``ResNet50_CXR_model.h5``, ``vgg16_ct.h5``, ``CT/InceptionV3.h5`` (any case,
any separator). Layers: the names ``keras.applications`` gives each network's blocks,
which survive fine-tuning and saving, nested base model or flat.
"""

from __future__ import annotations

import re

# Spellings in file names, compared with everything but letters and digits removed.
ARCH_SPELLINGS = {
    "vgg16": ("vgg16",),
    "vgg19": ("vgg19",),
    "inceptionv3": ("inceptionv3", "inception"),
    "resnet50": ("resnet50",),
}
MODALITY_WORDS = {"ct": "ct", "cxr": "xray", "xray": "xray", "xrays": "xray"}


def _arch_in(text: str) -> str | None:
    squeezed = re.sub(r"[^a-z0-9]", "", text.lower())
    for key, spellings in ARCH_SPELLINGS.items():
        if any(spelling in squeezed for spelling in spellings):
            return key
    return None


def _modality_in(text: str) -> str | None:
    """A word of its own (``_CT_``, ``-cxr``, ``x-ray``), after any architecture name is
    cut out, so ``vgg16ct`` counts and ``detect`` does not."""
    text = re.sub(r"x[-_ ]ray", "xray", text.lower())
    for spellings in ARCH_SPELLINGS.values():
        for spelling in spellings:
            text = re.sub(r"[-_ ]?".join(spelling), " ", text)
    found = {MODALITY_WORDS[w] for w in re.split(r"[^a-z0-9]+", text) if w in MODALITY_WORDS}
    return found.pop() if len(found) == 1 else None


def from_name(label: str) -> tuple[str | None, str | None]:
    """(architecture, modality) from a file's path inside its source, or None each.

    The file name decides; its folders are asked only for what the name lacks.
    """
    parts = re.split(r"[\\/]", label)
    name = re.sub(r"\.h5$", "", parts[-1], flags=re.IGNORECASE)
    arch, modality = _arch_in(name), _modality_in(name)
    for folder in reversed(parts[:-1]):
        arch = arch or _arch_in(folder)
        modality = modality or _modality_in(folder)
    return arch, modality


def layer_names(model) -> set[str]:
    """Every layer name, nested models included."""
    names, stack = set(), [model]
    while stack:
        layer = stack.pop()
        names.add(layer.name)
        stack.extend(getattr(layer, "layers", ()))
    return names


def from_layers(names: set[str]) -> str | None:
    """The architecture whose block names the model has, or None."""
    if "mixed10" in names:
        return "inceptionv3"
    if "conv5_block3_out" in names and "conv4_block7_out" not in names:
        return "resnet50"
    if "block5_conv4" in names:
        return "vgg19"
    if "block5_conv3" in names:
        return "vgg16"
    return None
