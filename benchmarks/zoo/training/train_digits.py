"""Train the built-in demo model: a small CNN on scikit-learn's 8x8 digits.

Deterministic (fixed seeds, single-process data pipeline, deterministic torch
algorithms).  Produces, next to this file:

* ``digits_cnn.onnx``  - opset 17, ir_version <= 10, dynamic batch axis, input
  ``input`` [batch,1,8,8] float32, output ``logits`` [batch,10].  The
  BatchNormalization nodes are deliberately kept as separate ops so that the
  fold-batchnorm pass has something to remove.
* ``digits_test.npz``  - held-out split: ``input`` float32 [n,1,8,8] and
  ``label`` int64 [n].

Run:  python -m zoo.training.train_digits   (or python benchmarks/zoo/training/train_digits.py)
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import time
from pathlib import Path

import numpy as np

SEED = 0
# the model and its test split ship in the package (the demo and the tests use them)
SHIPPED = Path(__file__).resolve().parents[3] / "graphopt" / "models"
DEFAULT_ONNX = SHIPPED / "digits_cnn.onnx"
DEFAULT_NPZ = SHIPPED / "digits_test.npz"


def _seed_everything(seed: int) -> None:
    # Must be set before CUDA/cuBLAS init; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def load_split(test_size: float = 0.25, random_state: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=random_state, stratify=y
    )
    return (
        np.ascontiguousarray(x_tr, dtype=np.float32),
        np.ascontiguousarray(x_te, dtype=np.float32),
        y_tr.astype(np.int64),
        y_te.astype(np.int64),
    )


def build_model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(32 * 4 * 4, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def _augment(xb, gen):
    """Random integer shift by -1..1 pixels in each direction (zero padded)."""
    import torch
    import torch.nn.functional as F

    n = xb.shape[0]
    padded = F.pad(xb, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    out = torch.empty_like(xb)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
    return out


def train(x_tr, y_tr, epochs: int, batch_size: int = 64, augment: bool = True):
    import torch
    import torch.nn as nn

    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = (len(x_tr) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    gen = torch.Generator().manual_seed(SEED)
    xt = torch.from_numpy(x_tr)
    yt = torch.from_numpy(y_tr)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size : (s + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm1d needs > 1 sample in training mode
                continue
            xb, yb = xt[idx], yt[idx]
            if augment:
                xb = _augment(xb, gen)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 5 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}/{epochs}  train loss {total / len(xt):.4f}")
    return model.eval()


def export_onnx(model, path: Path) -> None:
    import onnx
    import torch

    dummy = torch.zeros(1, 1, 8, 8, dtype=torch.float32)
    torch.onnx.export(
        model.eval(),
        (dummy,),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        # Keep BatchNormalization as separate ops: with TrainingMode.EVAL the
        # TorchScript exporter folds BN into the preceding Conv. PRESERVE on
        # a model in eval mode exports inference-mode BN (no extra outputs).
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, 10)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    p.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    args = p.parse_args(argv)

    _seed_everything(SEED)
    import onnx
    import onnxruntime as ort
    import torch

    x_tr, x_te, y_tr, y_te = load_split()
    print(f"train {len(x_tr)}  test {len(x_te)}")

    t0 = time.perf_counter()
    model = train(x_tr, y_tr, args.epochs)
    train_s = time.perf_counter() - t0
    print(f"training took {train_s:.1f} s")

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_te)).numpy()
    torch_pred = torch_logits.argmax(1)
    torch_acc = float((torch_pred == y_te).mean())
    print(f"torch test top-1: {torch_acc:.4f} ({int((torch_pred == y_te).sum())}/{len(y_te)})")

    args.onnx.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, args.onnx)
    np.savez(args.npz, input=x_te, label=y_te)

    m = onnx.load(str(args.onnx))
    hist = collections.Counter(n.op_type for n in m.graph.node)
    print(
        f"onnx: opset {m.opset_import[0].version}, ir_version {m.ir_version}, "
        f"{args.onnx.stat().st_size} bytes, ops {dict(sorted(hist.items()))}"
    )
    if hist.get("BatchNormalization", 0) == 0:
        raise SystemExit("exported graph lost its BatchNormalization nodes")

    sess = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_te})[0]
    ort_pred = ort_logits.argmax(1)
    ort_acc = float((ort_pred == y_te).mean())
    print(
        f"onnxruntime test top-1: {ort_acc:.4f} ({int((ort_pred == y_te).sum())}/{len(y_te)}), "
        f"max |logit diff| vs torch {np.abs(ort_logits - torch_logits).max():.2e}"
    )
    if not np.array_equal(ort_pred, torch_pred):
        raise SystemExit("onnxruntime and torch top-1 predictions differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
