"""Registry of pretrained backbones: builder, input size, preprocessing, feature size, blocks.

The ConvNets come from ``keras.applications``; DINOv2 ViT-S/14 from KerasHub's layers
(:mod:`tl_core.vit`), built so that its blocks are transformer blocks and its last feature map
is the grid of patch tokens: the rest of the engine treats it as one more ConvNet.

A saved model always takes raw RGB pixels in [0, 255]: each backbone's preprocessing is a layer
inside the model, not a function the caller must remember.

Importing this module does not import Keras (nor TensorFlow): the app's pages read the registry
without loading a deep-learning runtime into the web server.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tl_core import vit
from tl_core.errors import ConfigError, WeightsUnavailableError



class _LazyKeras:
    """``keras``, imported on first use."""

    def __getattr__(self, name: str):
        import keras as module

        return getattr(module, name)


keras = _LazyKeras()
WEIGHTS_DIR_ENV = "TL_WEIGHTS_DIR"
OFFLINE_ENV = "TL_OFFLINE"  # "1": never download weights (air-gapped machines, servers that ship them)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB, _TORCH_STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What the engine needs to know about one backbone.

    Attributes:
        name: registry key (``mobilenet``).
        title: human name (``MobileNet v1``).
        builder: name of the ``keras.applications`` constructor, or ``tl_core.vit.<function>``
            for a KerasHub vision transformer (see :meth:`build`).
        input_size: the side the ImageNet weights were trained at.
        preprocessing: ``tf`` (scale to [-1, 1]), ``caffe`` (RGB->BGR, ImageNet mean subtracted),
            ``torch`` (scaled to [0, 1], then ImageNet mean and standard deviation per channel)
            or ``none`` (the model normalises its own input, as EfficientNet does).
        feature_dim: channels after global average pooling.
        block_pattern: regex whose group 1 names the block a layer belongs to.
        weights_files: file names looked for in ``TL_WEIGHTS_DIR``, documented name first, then
            the name Keras gives its own download (for DINOv2: the weights file inside KerasHub's
            preset folder, then that file alone).
        n_blocks: how many blocks ``block_pattern`` finds (checked by the tests), so a setting
            can be validated before any model is built.
        top_weights_files: like ``weights_files``, for the weights with the 1000-class ImageNet
            classifier (the advisor asks it how well it recognises the user's images).
        imagenet_top1: ImageNet top-1 accuracy and ``params_m`` millions of parameters (with the
            top), as the Keras Applications table gives them (keras.io/api/applications); for
            DINOv2, its paper's linear probe on frozen features.
    """

    name: str
    title: str
    builder: str
    input_size: int
    preprocessing: str
    feature_dim: int
    block_pattern: str
    weights_files: tuple[str, ...]
    n_blocks: int
    top_weights_files: tuple[str, ...] = ()
    imagenet_top1: float = 0.0
    params_m: float = 0.0

    def build(self, **kwargs) -> keras.Model:
        """``keras.applications.<builder>(**kwargs)``, or ``tl_core.vit.<function>(**kwargs)``."""
        if self.builder.startswith("tl_core.vit."):
            return getattr(vit, self.builder.rpartition(".")[2])(**kwargs)
        return getattr(keras.applications, self.builder)(**kwargs)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "vgg16", "VGG16", "VGG16", 224, "caffe", 512, r"^(block\d)_",
            ("vgg16_imagenet_notop.weights.h5", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"), 5,
            ("vgg16_imagenet.weights.h5", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
            imagenet_top1=0.713, params_m=138.4,
        ),
        BackboneSpec(
            "mobilenet", "MobileNet v1", "MobileNet", 224, "tf", 1024,
            r"^conv_(?:dw|pw)_(\d+)",
            ("mobilenet_v1_1.0_224_imagenet_notop.weights.h5", "mobilenet_1_0_224_tf_no_top.h5"), 13,
            ("mobilenet_v1_1.0_224_imagenet.weights.h5", "mobilenet_1_0_224_tf.h5"),
            imagenet_top1=0.704, params_m=4.3,
        ),
        BackboneSpec(
            "mobilenetv2", "MobileNetV2", "MobileNetV2", 224, "tf", 1280,
            r"^(expanded_conv|block_\d+)_",
            (
                "mobilenet_v2_1.0_224_imagenet_notop.weights.h5",
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            ),
            17,
            ("mobilenet_v2_1.0_224_imagenet.weights.h5", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"),
            imagenet_top1=0.713, params_m=3.5,
        ),
        BackboneSpec(
            "efficientnetb0", "EfficientNetB0", "EfficientNetB0", 224, "none", 1280,
            r"^(block\d)[a-z]_",
            ("efficientnetb0_imagenet_notop.weights.h5", "efficientnetb0_notop.h5"), 7,
            ("efficientnetb0_imagenet.weights.h5", "efficientnetb0.h5"),
            imagenet_top1=0.771, params_m=5.3,
        ),
        # Stronger ImageNet models transfer better as frozen features (Kornblith et al., CVPR 2019).
        # Both families normalise their own input (include_preprocessing, the Keras default).
        BackboneSpec(
            "efficientnetv2b0", "EfficientNetV2-B0", "EfficientNetV2B0", 224, "none", 1280,
            r"^(block\d)[a-z]_",
            ("efficientnetv2b0_imagenet_notop.weights.h5", "efficientnetv2-b0_notop.h5"), 6,
            ("efficientnetv2b0_imagenet.weights.h5", "efficientnetv2-b0.h5"),
            imagenet_top1=0.787, params_m=7.2,
        ),
        BackboneSpec(
            "efficientnetv2s", "EfficientNetV2-S", "EfficientNetV2S", 384, "none", 1280,
            r"^(block\d)[a-z]_",
            ("efficientnetv2s_imagenet_notop.weights.h5", "efficientnetv2-s_notop.h5"), 6,
            ("efficientnetv2s_imagenet.weights.h5", "efficientnetv2-s.h5"),
            imagenet_top1=0.839, params_m=21.6,
        ),
        BackboneSpec(
            "convnexttiny", "ConvNeXt-Tiny", "ConvNeXtTiny", 224, "none", 768,
            r"^convnext_tiny_(stage_\d_block_\d+)_",
            ("convnexttiny_imagenet_notop.weights.h5", "convnext_tiny_notop.h5"), 18,
            ("convnexttiny_imagenet.weights.h5", "convnext_tiny.h5"),
            imagenet_top1=0.813, params_m=28.6,
        ),
        BackboneSpec(
            "resnet50", "ResNet50", "ResNet50", 224, "caffe", 2048,
            r"^(conv\d_block\d+)_",
            ("resnet50_imagenet_notop.weights.h5", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"), 16,
            ("resnet50_imagenet.weights.h5", "resnet50_weights_tf_dim_ordering_tf_kernels.h5"),
            imagenet_top1=0.749, params_m=25.6,
        ),
        # Self-supervised features (Oquab et al., 2023): a linear probe on them alone reaches 81.1% top-1
        # (the paper's ViT-S/14, distilled, probing CLS and mean patch tokens; here: the mean patch token).
        # KerasHub's preset folder holds the weights; 22.2 M parameters counted at 224 px.
        BackboneSpec(
            "dinov2_small", "DINOv2 ViT-S/14", "tl_core.vit.build_dinov2_small", 224, "torch", 384,
            rf"^({vit.BLOCK_PREFIX}\d+)$", (f"{vit.PRESET}/{vit.PRESET_WEIGHTS}", f"{vit.PRESET}.weights.h5"), 12,
            imagenet_top1=0.811, params_m=22.2,
        ),
    )
}


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``, or a ConfigError listing the choices."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"Unknown backbone '{name}'. Choose one of: {', '.join(BACKBONES)}.") from None


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from: ``keras_arg`` goes to the builder."""

    keras_arg: str | None
    identity: str
    description: str


@lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _digest(path: Path) -> str:
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


def resolve_weights(spec: BackboneSpec, weights: str, seed: int = 0) -> ResolvedWeights:
    """Turn ``imagenet`` / ``none`` / a path into what the Keras builder takes.

    ``imagenet`` first looks for the backbone's documented file in ``$TL_WEIGHTS_DIR``, then falls
    back to Keras' own download and cache (the usual path on a connected machine).

    Raises:
        ConfigError: a path that does not exist.
    """
    if weights in ("none", "None", None, ""):
        return ResolvedWeights(None, f"none-seed{seed}", "random initialisation")
    if weights == "imagenet":
        candidate = _find_file([os.environ.get(WEIGHTS_DIR_ENV)], spec.weights_files)
        if candidate is not None:
            return ResolvedWeights(str(candidate), f"imagenet-{_digest(candidate)}", f"ImageNet ({candidate.name})")
        if offline() and local_weights_file(spec.weights_files) is None:
            raise WeightsUnavailableError(_offline_message(spec, ConnectionError(f"{OFFLINE_ENV}=1: no download")))
        return ResolvedWeights("imagenet", "imagenet-keras", "ImageNet (Keras download)")
    path = Path(weights).expanduser()
    if path.is_dir() and (path / vit.PRESET_WEIGHTS).is_file():  # a KerasHub preset folder
        path = path / vit.PRESET_WEIGHTS
    if not path.is_file():
        raise ConfigError(
            f"Weights file '{weights}' does not exist. Use 'imagenet', 'none' or the path of a "
            f"{spec.title} weights file (.weights.h5 or .h5, without the classification top)."
        )
    return ResolvedWeights(str(path), f"file-{_digest(path)}", f"file {path.name}")


_FOLDERS = re.compile(r"(?:[A-Za-z]:)?[/\\].*[/\\]")  # from the first separator to the last


def weights_label(weights: str | None) -> str:
    """Weights as a stranger may see them: ``imagenet``, ``none``, or a file's name, never the folders
    of the server it sits in (a run's settings and notes made before this rule kept whole paths)."""
    if weights is None:
        return "none"
    text = str(weights)
    inner = re.fullmatch(r"(.*?\()(.*)\)", text)  # "ImageNet (/path/file.h5)": the path in the brackets
    return f"{inner[1]}{_FOLDERS.sub('', inner[2])})" if inner else _FOLDERS.sub("", text)


def _find_file(folders: list[str | None], filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` found in the first folder that has one (``None`` folders skipped)."""
    for folder in folders:
        for filename in filenames:
            if folder and (candidate := Path(folder).expanduser() / filename).is_file():
                return candidate
    return None


def offline() -> bool:
    """Whether ``TL_OFFLINE=1`` forbids downloading weights: only ``TL_WEIGHTS_DIR`` and Keras' cache count."""
    return os.environ.get(OFFLINE_ENV, "").strip() == "1"


def local_weights_file(filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` found in ``$TL_WEIGHTS_DIR`` or Keras' download cache, else None."""
    keras_cache = os.path.join(os.environ.get("KERAS_HOME", "~/.keras"), "models")
    return _find_file([os.environ.get(WEIGHTS_DIR_ENV), keras_cache], filenames)


def _offline_message(spec: BackboneSpec, err: Exception) -> str:
    first, last = spec.weights_files[0], spec.weights_files[-1]
    if first.endswith("/" + vit.PRESET_WEIGHTS):
        files = (f"KerasHub's '{first.split('/')[0]}' preset folder (with its '{vit.PRESET_WEIGHTS}': "
                 f"'{first}'), or that file alone as '{last}',")
    else:
        files = f"'{first}' (or Keras' own '{last}')"
    return (
        f"Could not download the ImageNet weights of {spec.title} ({err.__class__.__name__}: "
        f"{str(err)[:200]}). Offline? Put {files} in a folder and set {WEIGHTS_DIR_ENV} to it, "
        "or train with weights 'none'."
    )


def build_base(spec: BackboneSpec, weights: ResolvedWeights, image_size: int, seed: int = 0) -> keras.Model:
    """The backbone without its classification top, for ``image_size`` square RGB input.

    Raises:
        WeightsUnavailableError: ImageNet weights asked for, but offline and not in TL_WEIGHTS_DIR.
        ConfigError: the weights file does not fit this backbone.
    """
    keras.utils.set_random_seed(seed)
    kwargs = {"include_top": False, "weights": weights.keras_arg, "input_shape": (image_size, image_size, 3)}
    try:
        return spec.build(**kwargs)
    except Exception as err:  # noqa: BLE001 - classified below, the rest re-raised
        text = str(err)
        if weights.keras_arg == "imagenet" and (
            isinstance(err, OSError) or "URL fetch failure" in text or "urlopen" in text
        ):
            raise WeightsUnavailableError(_offline_message(spec, err)) from err
        if weights.keras_arg not in (None, "imagenet") and isinstance(err, (ValueError, OSError, KeyError)):
            raise ConfigError(
                f"The weights file '{weights.keras_arg}' does not fit {spec.title} without its top "
                f"({text[:200]}). Use a matching file, 'imagenet' or 'none'."
            ) from err
        raise


def preprocessing_layer(spec: BackboneSpec) -> keras.layers.Layer | None:
    """A built-in Keras layer doing the backbone's ``preprocess_input`` on raw [0, 255] RGB."""
    if spec.preprocessing == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
    if spec.preprocessing == "torch":
        # x / 255, then (x - mean) / std per channel: KerasHub's DINOV2ImageConverter, as one Rescaling.
        return keras.layers.Rescaling(
            scale=[1.0 / 255.0 / s for s in _TORCH_STD_RGB],
            offset=[-m / s for m, s in zip(_TORCH_MEAN_RGB, _TORCH_STD_RGB)], name="preprocess")
    if spec.preprocessing == "caffe":
        # RGB->BGR and mean subtraction as a frozen 3x3 Dense on the channel axis: an exact,
        # standard layer, so the saved model loads anywhere without custom code.
        layer = keras.layers.Dense(3, trainable=False, name="preprocess")
        layer.build((None, None, None, 3))
        flip = np.eye(3, dtype="float32")[::-1]
        layer.set_weights([flip, -np.asarray(_CAFFE_MEAN_BGR, dtype="float32")])
        return layer
    return None


def block_output_layer(spec: BackboneSpec, base: keras.Model, cut: int) -> str:
    """Name of the last layer of the block ``cut`` blocks below the top (0: the backbone's output).

    Padding layers between blocks are skipped, so the features are the block's own activations.

    Raises:
        ConfigError: ``cut`` out of range.
    """
    blocks = list_blocks(spec, base)
    if not 0 <= cut < len(blocks):
        raise ConfigError(f"{spec.title} has {len(blocks)} blocks; features can come from 0 to "
                          f"{len(blocks) - 1} blocks below the top, not {cut}.")
    if cut == 0:
        return base.layers[-1].name
    index = blocks[len(blocks) - cut][1] - 1
    while isinstance(base.layers[index], keras.layers.ZeroPadding2D):
        index -= 1
    return base.layers[index].name


def truncate_base(spec: BackboneSpec, base: keras.Model, cut: int) -> keras.Model:
    """The backbone up to the end of the block ``cut`` blocks below the top (the same weights).

    A vision transformer's block gives tokens: the cut model ends with their map (:func:`feature_map`).
    """
    if cut == 0:
        return base
    layer = base.get_layer(block_output_layer(spec, base, cut))
    return keras.Model(base.input, feature_map(layer.output, f"cut{cut}"), name=f"{base.name}_cut{cut}")


def feature_map(tensor, name: str):
    """``tensor`` as a ``(batch, height, width, channels)`` map: a ConvNet's as it is, a vision
    transformer's tokens as the grid of its patch tokens (:func:`tl_core.vit.token_map`)."""
    return tensor if len(tensor.shape) == 4 else vit.token_map(tensor, name)


def build_feature_model(
    spec: BackboneSpec, base: keras.Model, image_size: int, inference_mode: bool = True, cut=0
) -> keras.Model:
    """Raw pixels -> preprocessing -> backbone -> global average pooling -> feature vector.

    Args:
        inference_mode: call the backbone with ``training=False`` so BatchNormalization keeps its
            ImageNet statistics even when layers are unfrozen (transfer); ``False`` lets them
            learn (training from scratch).
        cut: take the features ``cut`` blocks below the top instead of from the last layer
            (earlier, more generic features: the advice for small data from a different domain);
            a list of cuts: their features concatenated (:func:`feature_slices` says where each is).
    """
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = inputs
    pre = preprocessing_layer(spec)
    if pre is not None:
        x = pre(x)
    if not isinstance(cut, int):  # several blocks' pooled features, side by side, from one pass
        cuts = list(cut)
        trunk = keras.Model(base.input, [base.get_layer(block_output_layer(spec, base, c)).output for c in cuts],
                            name=f"{base.name}_blocks")
        maps = trunk(x, training=False) if inference_mode else trunk(x)
        pooled = [keras.layers.GlobalAveragePooling2D(name=f"features_cut{c}")(feature_map(m, f"features_cut{c}"))
                  for c, m in zip(cuts, maps)]
        outputs = keras.layers.Concatenate(name="features")(pooled)
        return keras.Model(inputs, outputs, name=f"{spec.name}_block_features")
    base = truncate_base(spec, base, cut)
    x = base(x, training=False) if inference_mode else base(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_features")


def feature_slices(spec: BackboneSpec, base: keras.Model, cuts) -> dict[int, slice]:
    """Where each block's features sit in ``build_feature_model(..., cut=cuts)``'s output:
    ``{cut: columns}``."""
    slices, start = {}, 0
    for cut in cuts:
        width = int(base.get_layer(block_output_layer(spec, base, cut)).output.shape[-1])
        slices[cut], start = slice(start, start + width), start + width
    return slices


# --------------------------------------------------------------------------- blocks


def list_blocks(spec: BackboneSpec, base: keras.Model) -> list[tuple[str, int]]:
    """``(block name, index of its first layer)`` in order; the stem is not a block."""
    pattern = re.compile(spec.block_pattern)
    blocks: list[tuple[str, int]] = []
    seen: set[str] = set()
    for index, layer in enumerate(base.layers):
        match = pattern.match(layer.name)
        if match and match.group(1) not in seen:
            seen.add(match.group(1))
            blocks.append((match.group(1), index))
    return blocks


def split_at_block(spec: BackboneSpec, base: keras.Model, n_blocks: int, image_size: int) -> tuple[keras.Model, keras.Model] | None:
    """The backbone cut below its top ``n_blocks`` blocks: ``(bottom, top)`` sharing its layers.

    ``bottom`` takes raw pixels (preprocessing inside) and gives the activations entering the
    first unfrozen block; ``top`` takes those and gives the backbone's output. ``None`` when there
    is nothing below the cut (all blocks) or the graph does not split into one tensor there.
    """
    blocks = list_blocks(spec, base)
    if n_blocks <= 0 or n_blocks >= len(blocks):
        return None
    first = base.layers[blocks[len(blocks) - n_blocks][1]]
    cut = first.input
    if isinstance(cut, (list, tuple)):
        return None
    try:
        top = keras.Model(cut, base.output, name=f"{base.name}_top{n_blocks}")
    except ValueError:
        return None
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    pre = preprocessing_layer(spec)
    x = pre(inputs) if pre is not None else inputs
    bottom_part = keras.Model(base.input, cut, name=f"{base.name}_bottom{n_blocks}")
    bottom = keras.Model(inputs, bottom_part(x, training=False), name=f"{base.name}_bottom")
    return bottom, top


def set_trainable_blocks(spec: BackboneSpec, base: keras.Model, n_blocks: int) -> int:
    """Unfreeze the top ``n_blocks`` blocks (``-1``: all layers); BatchNormalization stays frozen.

    Returns:
        The number of trainable weight tensors in the base afterwards.

    Raises:
        ConfigError: more blocks asked for than the backbone has.
    """
    blocks = list_blocks(spec, base)
    if n_blocks > len(blocks):
        raise ConfigError(
            f"{spec.title} has {len(blocks)} blocks; cannot unfreeze {n_blocks}. "
            f"Use 1-{len(blocks)}, or -1 for all layers."
        )
    if n_blocks == 0:
        base.trainable = False
        return 0
    cut = 0 if n_blocks < 0 else blocks[len(blocks) - n_blocks][1]
    base.trainable = True
    for index, layer in enumerate(base.layers):
        # Frozen BN weights + training=False calls: the ImageNet statistics are never disturbed
        # by small, differently distributed batches (the keras-io fine-tuning recipe).
        frozen = index < cut or isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not frozen
    return len(base.trainable_weights)
