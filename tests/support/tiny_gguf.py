"""Write a tiny random-weight llama GGUF model for tests that run a real llama-server.

The model is garbage on purpose: it only has to load fast and answer. About 470 KB,
F32, arch ``llama``, 2 layers, n_embd 64, 4 heads, ff 128, context 512, and a
``llama`` (SentencePiece-style) vocabulary of ``<unk>``, ``<s>``, ``</s>`` plus the
256 byte tokens ``<0x00>``..``<0xFF>``, so every input text is tokenizable.

Needs the PyPI packages ``gguf`` and ``numpy`` (``gguf`` also pulls in pyyaml,
requests and tqdm).

Usage: ``python -m tests.support.tiny_gguf OUT.gguf`` or ``write_tiny_gguf(path)``.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
N_CTX = 512
SEED = 20240607


def _vocab() -> tuple[list[str], list[int]]:
    import gguf

    tokens = ["<unk>", "<s>", "</s>"]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(gguf.TokenType.BYTE)
    return tokens, [int(t) for t in types]


def write_tiny_gguf(path: pathlib.Path) -> pathlib.Path:
    """Write the tiny model to ``path`` (parent dirs created) and return ``path``."""
    import gguf

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    tokens, token_types = _vocab()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    rng = np.random.default_rng(SEED)

    def w(*shape: int) -> np.ndarray:
        # numpy shape is the reverse of ggml's ne: (rows=out, cols=in).
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_name("hroute-tiny-test-model")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(N_CTX)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYER)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(n_vocab)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * n_vocab)
        writer.add_token_types(token_types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)

        writer.add_tensor("token_embd.weight", w(n_vocab, N_EMBD))
        for i in range(N_LAYER):
            p = f"blk.{i}"
            writer.add_tensor(f"{p}.attn_norm.weight", ones(N_EMBD))
            writer.add_tensor(f"{p}.attn_q.weight", w(N_HEAD * head_dim, N_EMBD))
            writer.add_tensor(f"{p}.attn_k.weight", w(N_HEAD * head_dim, N_EMBD))
            writer.add_tensor(f"{p}.attn_v.weight", w(N_HEAD * head_dim, N_EMBD))
            writer.add_tensor(f"{p}.attn_output.weight", w(N_EMBD, N_HEAD * head_dim))
            writer.add_tensor(f"{p}.ffn_norm.weight", ones(N_EMBD))
            writer.add_tensor(f"{p}.ffn_gate.weight", w(N_FF, N_EMBD))
            writer.add_tensor(f"{p}.ffn_up.weight", w(N_FF, N_EMBD))
            writer.add_tensor(f"{p}.ffn_down.weight", w(N_EMBD, N_FF))
        writer.add_tensor("output_norm.weight", ones(N_EMBD))
        writer.add_tensor("output.weight", w(n_vocab, N_EMBD))

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tests.support.tiny_gguf OUT.gguf", file=sys.stderr)
        return 2
    out = write_tiny_gguf(pathlib.Path(argv[0]))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
