"""Train a small Keras transformer encoder on scikit-learn's 8x8 digits; export it with tf2onnx.

The corpus entry ``digits-transformer-tf2onnx`` (zoo.exported) ships what this script
writes, so graphopt sees attention as TensorFlow users export it: Keras' ``MultiHeadAttention``
(``EinsumDense`` projections), ``LayerNormalization`` and tanh GELU, through tf2onnx's own op
patterns, which neither ONNX Runtime's session optimizer nor onnxscript's fusion rules match.
The image is read as a sequence of 64 pixel tokens (a pixel-level "ViT"), so the attention
runs at sequence length 64.

Like ``train_digits_keras`` it needs TensorFlow and tf2onnx, which graphopt does not depend
on: run it in a separate virtual environment::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx scikit-learn
    cd /path/to/graphopt
    PYTHONPATH=. /tmp/tfenv/bin/python -m zoo.training.train_digits_transformer_keras

The shipped file was made with tensorflow-cpu 2.21.0, keras 3.15.1, tf2onnx 1.17.0,
onnx 1.23.2, numpy 2.4.6, scikit-learn 1.9.1 on Python 3.11, in about a minute on two cores.

Writes ``digits_transformer_tf2onnx.onnx`` next to this file: tf2onnx ``from_keras`` at
opset 15 (tf2onnx's default), input ``pixels`` [batch, 64] float32 (the 8x8 image row-major,
values 0..1 as in the demo's split), output ``logits`` [batch, 10].
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from zoo.training.train_digits_keras import _seed_everything, check_export, export_keras

SEED = 0
OPSET = 15
HERE = Path(__file__).resolve().parent
DEFAULT_ONNX = HERE.parent / "models" / "digits_transformer_tf2onnx.onnx"
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
TOKENS = 64
WIDTH = 64
HEADS = 4
LAYERS = 2
FFN = 128


def load_split_flat() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's split (``train_digits.load_split``), images flattened to [n, 64]."""
    from zoo.training.train_digits import load_split

    x_tr, x_te, y_tr, y_te = load_split()
    return (
        np.ascontiguousarray(x_tr.reshape(len(x_tr), TOKENS)),
        np.ascontiguousarray(x_te.reshape(len(x_te), TOKENS)),
        y_tr,
        y_te,
    )


def _gelu_tanh(x):
    from tensorflow import keras

    return keras.activations.gelu(x, approximate=True)


def build_model():
    from tensorflow import keras

    layers = keras.layers

    class PositionEmbedding(layers.Layer):
        """A learned embedding per token position, added to the token features."""

        def build(self, input_shape):
            self.table = self.add_weight(
                shape=(TOKENS, WIDTH), initializer="random_normal", name="table"
            )

        def call(self, x):
            return x + self.table

    inputs = keras.Input(shape=(TOKENS,), name=INPUT_NAME)
    x = layers.Reshape((TOKENS, 1), name="tokens")(inputs)
    x = layers.Dense(WIDTH, name="embed")(x)
    x = PositionEmbedding(name="position")(x)
    for i in range(LAYERS):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"ln_attn_{i}")(x)
        h = layers.MultiHeadAttention(HEADS, WIDTH // HEADS, name=f"attn_{i}")(h, h)
        x = layers.Add(name=f"res_attn_{i}")([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"ln_ffn_{i}")(x)
        h = layers.Dense(FFN, name=f"ffn_in_{i}")(h)
        # tanh GELU: Keras 3's exact GELU lowers to TF's Erfc, which tf2onnx cannot convert.
        h = layers.Activation(_gelu_tanh, name=f"gelu_{i}")(h)
        h = layers.Dense(WIDTH, name=f"ffn_out_{i}")(h)
        x = layers.Add(name=f"res_ffn_{i}")([x, h])
    x = layers.LayerNormalization(epsilon=1e-6, name="ln_final")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(10, name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="digits_transformer_keras")


def train(x_tr: np.ndarray, y_tr: np.ndarray, epochs: int, batch_size: int = 64):
    from tensorflow import keras

    model = build_model()
    steps = epochs * ((len(x_tr) + batch_size - 1) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps, warmup_steps=50)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    for epoch in range(epochs):
        hist = model.fit(x_tr, y_tr, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
        if (epoch + 1) % 5 == 0 or epoch == 0:
            loss = hist.history["loss"][-1]
            acc = hist.history["accuracy"][-1]
            print(f"epoch {epoch + 1:3d}/{epochs}  train loss {loss:.4f}  acc {acc:.4f}")
    return model


def export_onnx(model, path: Path):
    return export_keras(model, path, (None, TOKENS), INPUT_NAME, OPSET)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    args = p.parse_args(argv)

    _seed_everything(SEED)
    x_tr, x_te, y_tr, y_te = load_split_flat()
    print(f"train {len(x_tr)}  test {len(x_te)}")

    t0 = time.perf_counter()
    model = train(x_tr, y_tr, args.epochs)
    print(f"training took {time.perf_counter() - t0:.1f} s")
    keras_logits = model.predict(x_te, batch_size=256, verbose=0)
    keras_pred = keras_logits.argmax(1)
    print(f"keras test top-1: {float((keras_pred == y_te).mean()):.4f}")

    proto = export_onnx(model, args.onnx)
    if [i.name for i in proto.graph.input] != [INPUT_NAME]:
        raise SystemExit(f"unexpected ONNX inputs {[i.name for i in proto.graph.input]}")
    return check_export(proto, args.onnx, {INPUT_NAME: x_te}, y_te, keras_logits)


if __name__ == "__main__":
    raise SystemExit(main())
