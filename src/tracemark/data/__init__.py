"""Datasets (digits, MNIST, Fashion-MNIST, npz) and small reference models."""

from tracemark.data.datasets import ImageData, load_dataset, shared_data_dir
from tracemark.data.models import ARCHITECTURES, ModelSpec, build_model, load_model, model_spec, save_model

__all__ = [
    "ImageData",
    "load_dataset",
    "shared_data_dir",
    "ARCHITECTURES",
    "ModelSpec",
    "build_model",
    "load_model",
    "model_spec",
    "save_model",
]
