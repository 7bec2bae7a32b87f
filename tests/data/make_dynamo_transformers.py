"""Write the tiny dynamo-exported transformers the default tests read (needs torch and
transformers; the files are committed, so the tests do not):

* ``bert_dynamo.onnx``: a 2-layer BERT encoder (hidden 32, 4 heads, vocabulary 64, seeded
  random weights), inputs ``input_ids``/``attention_mask`` [batch, sequence];
* ``bert_torchscript.onnx``: the same BERT (same weights) through the TorchScript exporter
  (opset 17), whose padding mask onnxscript's attention rules do not match;
* ``gpt2_dynamo.onnx``: a 1-layer GPT-2 (n_embd 32, 4 heads, vocabulary 64), causal
  attention and Conv1D projections exported as Gemm.

Run ``python tests/data/make_dynamo_transformers.py`` to regenerate them.
"""

from __future__ import annotations

from pathlib import Path

import onnx

HERE = Path(__file__).parent


def _write(module, args, path: Path, dynamic: bool = True) -> None:
    from graphopt.zoo import exported

    torch = exported.zoo._require("torch")
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence", max=64)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    proto = exported._dynamo(
        module.eval(),
        args,
        opset=18,
        input_names=["input_ids", "attention_mask"],
        output_names=None,
        dynamic_shapes=shapes,
    )
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
    from graphopt.zoo import exported

    torch = exported.zoo._require("torch")
    transformers = exported._transformers()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 11:] = 0

    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            attn_implementation="eager",
        ),
        add_pooling_layer=False,
    )

    class Hidden(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

    _write(Hidden(bert), (ids, mask), HERE / "bert_dynamo.onnx")
    # the same BERT through the TorchScript exporter: its padding mask is a [B, 1, S, S]
    # Where that onnxscript's attention rules do not match
    proto = exported.zoo.torchscript_proto(
        Hidden(bert).eval(),
        (ids, mask),
        opset=17,
        input_names=["input_ids", "attention_mask"],
        output_names=["hidden"],
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask")},
    )
    onnx.save(proto, str(HERE / "bert_torchscript.onnx"))
    print(f"wrote {HERE / 'bert_torchscript.onnx'}")

    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_layer=1,
            n_head=4,
            n_embd=32,
            vocab_size=64,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        )
    )

    class Logits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    _write(Logits(gpt2), (ids, mask), HERE / "gpt2_dynamo.onnx")


if __name__ == "__main__":
    main()
