"""Datasets (digits, MNIST, Fashion-MNIST, npz, image folders, memmap folders) and small reference models."""

from tracemark.data.datasets import ImageData, load_dataset, shared_data_dir
from tracemark.data.models import ARCHITECTURES, ModelSpec, build_model, load_model, model_spec, resnet18, save_model
from tracemark.data.ondisk import ImageFolder, MemmapImages, open_folder, write_memmap

__all__ = [
    "ImageData",
    "load_dataset",
    "shared_data_dir",
    "ImageFolder",
    "MemmapImages",
    "open_folder",
    "write_memmap",
    "ARCHITECTURES",
    "ModelSpec",
    "build_model",
    "load_model",
    "model_spec",
    "resnet18",
    "save_model",
]
