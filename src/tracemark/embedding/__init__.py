"""Embedding: mix triggers into training, or fine-tune them into a trained model."""

from tracemark.embedding.mixing import TriggerMixDataset
from tracemark.embedding.posthoc import assess, embed
from tracemark.embedding.report import EmbedReport

__all__ = ["EmbedReport", "TriggerMixDataset", "assess", "embed"]
