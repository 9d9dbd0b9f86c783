"""The small family: sub-word unigram + hashed bigram embedding bag, trained from scratch.

Built for Chinese and English alike. The tokenizer (Hugging Face ``tokenizers``, trained on
the training texts) splits every CJK character into its own token and English into WordPiece
sub-words, and maps every digit to ``0`` so that order numbers, amounts and dates become shape
tokens. Inside the network, adjacent token ids are hashed into a bigram table, which recovers
Chinese words (退款, 发票) and English phrases without a word segmenter. The whole thing trains
in seconds on two CPU cores and answers in well under a millisecond.

Needs torch: imported only by the training pipeline, never by a node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import nn

__all__ = ["NgramClassifier", "NgramConfig", "build_tokenizer"]

PAD, UNK = "[PAD]", "[UNK]"
# Large odd multiplier for hashing (a, b) token pairs; must match between training and ONNX.
_HASH_MUL = 1_000_003


@dataclass(kw_only=True)
class NgramConfig:
    vocab_size: int = 12_000
    bigram_buckets: int = 1 << 16
    dim: int = 64
    hidden: int = 128
    dropout: float = 0.2
    max_length: int = 128


def build_tokenizer(texts: Sequence[str], *, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=64))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.BertNormalizer(
                clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True
            ),
            normalizers.Replace(Regex(r"\d"), "0"),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=[PAD, UNK], show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


class NgramClassifier(nn.Module):
    """logits = MLP([mean(unigram emb), mean(hashed bigram emb)])."""

    def __init__(self, *, vocab_size: int, num_labels: int, config: NgramConfig):
        super().__init__()
        self.buckets = config.bigram_buckets
        # Sparse gradients: each step touches a few hundred rows of 65k, not all of them.
        self.unigram = nn.Embedding(vocab_size, config.dim, padding_idx=0, sparse=True)
        self.bigram = nn.Embedding(config.bigram_buckets, config.dim, sparse=True)
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(2 * config.dim, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, num_labels),
        )
        nn.init.normal_(self.unigram.weight, std=0.1)
        nn.init.normal_(self.bigram.weight, std=0.1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        uni = self.unigram(input_ids) * mask.unsqueeze(-1)
        uni = uni.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        # Bigram i joins tokens i and i+1; it counts only when both are real tokens.
        a, b = input_ids[:, :-1], input_ids[:, 1:]
        bmask = (mask[:, :-1] * mask[:, 1:]).unsqueeze(-1)
        h = torch.remainder(a * _HASH_MUL + b, self.buckets)
        bi = self.bigram(h) * bmask
        bi = bi.sum(1) / bmask.sum(1).clamp(min=1.0)
        return self.head(torch.cat([uni, bi], dim=-1))
