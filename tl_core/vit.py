"""DINOv2 ViT-S/14 (Oquab et al., 2023) from KerasHub's layers, shaped like the registry's ConvNets.

The model this module builds is a functional Keras model whose top-level layers are the patch and
position embeddings, each transformer block as one layer (``dinov2_block_0`` ... ``dinov2_block_11``),
the final LayerNormalization and two standard layers that drop the CLS token and lay the patch
tokens out as a ``(side / 14, side / 14, 384)`` map. So the engine's ConvNet machinery applies as it
is: global average pooling gives the mean patch token (the DINOv2 paper's linear probe also
concatenates the CLS token; this app uses the mean patch token alone), Grad-CAM weighs the token
grid, and the blocks the engine unfreezes, splits at or cuts features from are transformer blocks.

Only KerasHub's layer classes are used (their ``from_preset`` serves just to download the weights),
and the layers around them are standard Keras layers, so a saved ``.keras`` file loads in safe mode
wherever ``keras_hub`` is installed, without this package.

Importing this module imports neither Keras nor KerasHub.
"""

from __future__ import annotations

from tl_core.errors import ConfigError

PATCH_SIZE = 14
PRESET = "dinov2_small"  # KerasHub's preset (Kaggle: keras/dinov2/keras/dinov2_small)
PRESET_WEIGHTS = "model.weights.h5"  # the weights file inside a KerasHub preset folder
# ViT-S/14 as KerasHub's preset config gives it (Hugging Face facebook/dinov2-small, converted).
DINOV2_SMALL = {
    "patch_size": PATCH_SIZE, "num_layers": 12, "hidden_dim": 384, "num_heads": 6, "intermediate_dim": 1536,
    "layer_scale_init_value": 1.0, "num_register_tokens": 0, "use_mask_token": True, "use_swiglu_ffn": False,
    "dropout_rate": 0.0, "drop_path_rate": 0.0, "position_embedding_shape": (518, 518, 3),
    "antialias_in_interpolation": False,
}
BLOCK_PREFIX = "dinov2_block_"


def patch_side(image_size: int) -> int:
    """The side the network sees: ``image_size`` rounded to the nearest multiple of the patch size
    (at least one patch). Other sizes are resized to it inside the model."""
    return max(1, round(image_size / PATCH_SIZE)) * PATCH_SIZE


def token_map(tokens, name: str):
    """A ViT's ``(batch, 1 + side * side, channels)`` tokens as the ``(batch, side, side, channels)``
    map of its patch tokens (the CLS token dropped): what a ConvNet's block gives, for pooling and
    Grad-CAM. Standard layers only, named ``{name}_patch_tokens`` and ``{name}_map``."""
    import keras

    n_tokens, channels = int(tokens.shape[1]), int(tokens.shape[2])
    side = round((n_tokens - 1) ** 0.5)
    if side * side != n_tokens - 1:
        raise ConfigError(f"{n_tokens} tokens are not a CLS token and a square grid of patches.")
    patches = keras.layers.Cropping1D((1, 0), name=f"{name}_patch_tokens")(tokens)
    return keras.layers.Reshape((side, side, channels), name=f"{name}_map")(patches)


def build_dinov2_small(include_top: bool = False, weights: str | None = None,
                       input_shape: tuple[int, int, int] = (224, 224, 3)):
    """DINOv2 ViT-S/14 without a classifier, for square RGB input already normalised (ImageNet mean
    and standard deviation), with the signature of a ``keras.applications`` constructor.

    Args:
        include_top: must be False: DINOv2 has no ImageNet classifier.
        weights: ``None`` (random), ``"imagenet"`` (KerasHub's ``dinov2_small`` preset, downloaded
            and cached by KerasHub) or the path of a KerasHub ``DINOV2Backbone`` weights file (the
            ``model.weights.h5`` of the preset folder).
        input_shape: ``(size, size, 3)``; a size that is not a multiple of 14 is resized inside the
            model to the nearest one (:func:`patch_side`).

    Raises:
        ConfigError: ``include_top``, or a non-square input.
        OSError: the preset could not be downloaded (``requests``' ConnectionError is one).
        ValueError: the weights file is not DINOv2 ViT-S/14's.
    """
    import keras
    from keras_hub.src.models.dinov2.dinov2_layers import DINOV2Embedding, DINOV2Layer

    if include_top:
        raise ConfigError("DINOv2 ViT-S/14 has no ImageNet classifier; build it without its top.")
    size, width = int(input_shape[0]), int(input_shape[1])
    if size != width:
        raise ConfigError(f"DINOv2 takes square images; got {size} x {width} pixels.")
    side = patch_side(size)
    hp = DINOV2_SMALL
    inputs = keras.Input((size, size, 3), name="images")
    x = inputs if side == size else keras.layers.Resizing(side, side, name="dinov2_resize")(inputs)
    x = DINOV2Embedding(
        hidden_dim=hp["hidden_dim"], patch_size=PATCH_SIZE, image_shape=(side, side),
        num_register_tokens=hp["num_register_tokens"], use_mask_token=hp["use_mask_token"],
        dropout_rate=hp["dropout_rate"], position_embedding_shape=hp["position_embedding_shape"][:2],
        antialias_in_interpolation=hp["antialias_in_interpolation"], name="dinov2_embeddings",
    )(x)
    for index in range(hp["num_layers"]):
        x = DINOV2Layer(
            hidden_dim=hp["hidden_dim"], num_heads=hp["num_heads"], intermediate_dim=hp["intermediate_dim"],
            layer_scale_init_value=hp["layer_scale_init_value"], use_swiglu_ffn=hp["use_swiglu_ffn"],
            dropout_rate=hp["dropout_rate"], drop_path_rate=hp["drop_path_rate"],
            name=f"{BLOCK_PREFIX}{index}",
        )(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="dinov2_layernorm")(x)
    model = keras.Model(inputs, token_map(x, "dinov2"), name="dinov2_small")
    if weights is not None:
        _copy_weights(_keras_hub_backbone(weights, side), model)
    return model


def _keras_hub_backbone(weights: str, side: int):
    """KerasHub's ``DINOV2Backbone`` (ViT-S/14 at ``side`` pixels) holding ``weights``."""
    import keras_hub

    if weights == "imagenet":
        return keras_hub.models.DINOV2Backbone.from_preset(PRESET, image_shape=(side, side, 3))
    backbone = keras_hub.models.DINOV2Backbone(image_shape=(side, side, 3), **DINOV2_SMALL)
    backbone.load_weights(weights)  # position embeddings: stored at 518 px, interpolated to ``side``
    return backbone


def _copy_weights(source, model) -> None:
    """KerasHub backbone ``source``'s weights into :func:`build_dinov2_small`'s ``model``, layer by layer.

    Raises:
        ValueError: the two differ in shape (``source`` is another DINOv2 size).
    """
    pairs = [(source.embeddings, model.get_layer("dinov2_embeddings")),
             (source.layernorm, model.get_layer("dinov2_layernorm"))]
    blocks = source.encoder.layers
    if len(blocks) != DINOV2_SMALL["num_layers"]:
        raise ValueError(f"{len(blocks)} transformer blocks, not ViT-S/14's {DINOV2_SMALL['num_layers']}")
    pairs += [(block, model.get_layer(f"{BLOCK_PREFIX}{index}")) for index, block in enumerate(blocks)]
    for src, dst in pairs:
        dst.set_weights(src.get_weights())  # ValueError on a shape mismatch
