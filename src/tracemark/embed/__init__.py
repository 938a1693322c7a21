"""Embedding: mix triggers into training, or fine-tune them into a trained model."""

from tracemark.embed.mixing import TriggerMixDataset
from tracemark.embed.posthoc import assess, embed
from tracemark.embed.report import EmbedReport

__all__ = ["EmbedReport", "TriggerMixDataset", "assess", "embed"]
