"""Train a small Keras CNN on scikit-learn's 8x8 digits and export it with tf2onnx.

The corpus entry ``digits-tf2onnx`` (zoo.exported) ships what this script writes, so
graphopt's tests and benchmarks see a model as TensorFlow users export it: NHWC input, the
Transposes tf2onnx puts around convolutions, and tf2onnx's own op patterns.

It needs TensorFlow and tf2onnx, which graphopt does not depend on: run it in a separate
virtual environment, never in graphopt's own (TensorFlow pins protobuf and numpy)::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx scikit-learn
    PYTHONPATH=/path/to/graphopt /tmp/tfenv/bin/python -m zoo.training.train_digits_keras

(``PYTHONPATH`` makes ``graphopt.models`` importable, for the demo's data split and to write
beside this file; graphopt's own dependencies are not needed.) The shipped files were made with
tensorflow-cpu 2.21.0, keras 3.15.1, tf2onnx 1.17.0, onnx 1.23.2, protobuf 7.36.2, numpy 2.4.6,
scikit-learn 1.9.1 on Python 3.11 (pip's own resolution of the line above), in about 20 s on
two CPU cores.

Writes, next to this file:

* ``digits_cnn_tf2onnx.onnx`` - tf2onnx ``from_keras`` at opset 13, ir_version <= 10, input
  ``input`` [batch, 8, 8, 1] float32 (NHWC, symbolic batch), output ``logits`` [batch, 10];

Its DATA is not shipped: the corpus entry cuts it from the demo's split (the held-out 450
digits for evaluation, training digits for calibration), transposed to NHWC.

Deterministic given the versions above: fixed seeds, op determinism, two threads.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

import numpy as np

SEED = 0
OPSET = 13
MAX_IR_VERSION = 10
HERE = Path(__file__).resolve().parent
DEFAULT_ONNX = HERE.parent / "models" / "digits_cnn_tf2onnx.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def load_split_nhwc() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's split (``train_digits.load_split``), images as NHWC [n, 8, 8, 1]."""
    from zoo.training.train_digits import load_split

    x_tr, x_te, y_tr, y_te = load_split()
    return (
        np.ascontiguousarray(x_tr.transpose(0, 2, 3, 1)),
        np.ascontiguousarray(x_te.transpose(0, 2, 3, 1)),
        y_tr,
        y_te,
    )


def _seed_everything(seed: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_model():
    from tensorflow import keras

    layers = keras.layers
    inputs = keras.Input(shape=(8, 8, 1), name=INPUT_NAME)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="digits_cnn_keras")


def _shifted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by -1..1 pixels along each axis (zero padded)."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dy = rng.integers(0, 3, len(x))
    dx = rng.integers(0, 3, len(x))
    return np.stack([padded[i, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(len(x))])


def train(x_tr: np.ndarray, y_tr: np.ndarray, epochs: int, batch_size: int = 64):
    from tensorflow import keras

    model = build_model()
    steps = epochs * ((len(x_tr) + batch_size - 1) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(SEED)
    for epoch in range(epochs):
        hist = model.fit(
            _shifted(x_tr, rng), y_tr, batch_size=batch_size, epochs=1, shuffle=True, verbose=0
        )
        if (epoch + 1) % 5 == 0 or epoch == 0:
            loss = hist.history["loss"][-1]
            acc = hist.history["accuracy"][-1]
            print(f"epoch {epoch + 1:3d}/{epochs}  train loss {loss:.4f}  acc {acc:.4f}")
    return model


def export_onnx(model, path: Path):
    return export_keras(model, path, (None, 8, 8, 1), INPUT_NAME, OPSET)


def export_keras(model, path: Path, shape: tuple, input_name: str, opset: int):
    """tf2onnx ``from_keras`` with one float32 input of ``shape``; checked, saved, returned."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec(shape, tf.float32, name=input_name),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return proto


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    args = p.parse_args(argv)

    _seed_everything(SEED)

    x_tr, x_te, y_tr, y_te = load_split_nhwc()
    print(f"train {len(x_tr)}  test {len(x_te)}")

    t0 = time.perf_counter()
    model = train(x_tr, y_tr, args.epochs)
    print(f"training took {time.perf_counter() - t0:.1f} s")
    keras_logits = model.predict(x_te, batch_size=256, verbose=0)
    keras_pred = keras_logits.argmax(1)
    keras_acc = float((keras_pred == y_te).mean())
    print(f"keras test top-1: {keras_acc:.4f} ({int((keras_pred == y_te).sum())}/{len(y_te)})")

    proto = export_onnx(model, args.onnx)
    if [i.name for i in proto.graph.input] != [INPUT_NAME]:
        raise SystemExit(f"unexpected ONNX inputs {[i.name for i in proto.graph.input]}")

    return check_export(proto, args.onnx, {INPUT_NAME: x_te}, y_te, keras_logits)


def check_export(proto, path: Path, feed: dict, labels: np.ndarray, keras_logits) -> int:
    """Print what tf2onnx wrote, and where onnxruntime is installed, check that it gives
    Keras' top-1 answers on ``feed``."""
    hist = collections.Counter(n.op_type for n in proto.graph.node)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    print(
        f"onnx: opsets {opsets}, ir_version {proto.ir_version}, producer "
        f"{proto.producer_name} {proto.producer_version}, {path.stat().st_size} bytes, "
        f"outputs {[o.name for o in proto.graph.output]}, ops {dict(sorted(hist.items()))}"
    )
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed here: check the ONNX model's accuracy elsewhere")
        return 0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(None, feed)[0]
    ort_pred = ort_logits.argmax(1)
    print(
        f"onnxruntime test top-1: {float((ort_pred == labels).mean()):.4f}, "
        f"max |logit diff| vs keras {np.abs(ort_logits - keras_logits).max():.2e}"
    )
    if not np.array_equal(ort_pred, keras_logits.argmax(1)):
        raise SystemExit("onnxruntime and keras top-1 predictions differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
