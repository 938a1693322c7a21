"""``tracemark train``, ``tracemark embed`` and ``tracemark export``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from tracemark.cli import _options as opts
from tracemark.cli._options import LEDGER_HELP, arch_model, data_help, load_key, record_event
from tracemark.cli._output import console, emit, error_console

if TYPE_CHECKING:
    from tracemark.data.factories import BuiltModel

TRAIN_SAMPLES = 40_000
"""Default training length: about this many examples seen (20 epochs of digits, 2 of MNIST)."""


def default_epochs(n_train: int) -> int:
    """Epochs for ``train`` without ``--epochs``: about :data:`TRAIN_SAMPLES` examples, at least 2 and at most 20 epochs."""
    return max(2, min(20, -(-TRAIN_SAMPLES // max(1, n_train))))


def train(
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (.safetensors)."),
    data: str = typer.Option("digits", help=data_help("Dataset", folders=True)),
    arch: str = typer.Option("small_cnn", help=opts.ARCH_HELP),
    input_shape: Optional[str] = opts.INPUT_SHAPE_OPT,
    classes: Optional[int] = opts.CLASSES_OPT,
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default: about 40,000 examples seen; 20 on digits, 2 on MNIST)."),
    seed: int = typer.Option(0, help="Seed for weights and shuffling."),
    key: Optional[Path] = typer.Option(None, help="Embed this key during training (trigger mixing)."),
    ratio: float = typer.Option(0.05, help="With --key: trigger items as a fraction of the training set."),
    device: Optional[str] = opts.DEVICE_OPT,
    precision: Optional[str] = opts.PRECISION_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Train a reference model, or your own (--arch package.module:factory), optionally marking it during training."""
    from tracemark.data import ImageData
    from tracemark.embedding import TriggerMixDataset, assess
    from tracemark.training import accuracy, fit, to_tensor_dataset

    dataset = opts.load_data(data, opts.parse_input_shape(input_shape))
    built = arch_model(arch, None, input_shape, classes, default_shape=dataset.input_shape,
                       default_classes=dataset.num_classes, seed=seed)
    model = built.module
    # an on-disk folder has no test split: its accuracy below is on the training images
    on_disk = not isinstance(dataset, ImageData)
    train_set = dataset if on_disk else to_tensor_dataset(dataset.x_train, dataset.y_train)
    wm_key = load_key(key) if key else None
    if wm_key is not None:
        train_set = TriggerMixDataset(train_set, wm_key, ratio=ratio)
    if epochs is None:
        epochs = default_epochs(len(train_set))
        if not as_json:
            error_console.print(f"training {arch} on {dataset.name} for {epochs} epochs ({len(train_set)} examples each; "
                                "--epochs changes it)", highlight=False)
    report = fit(model, train_set, epochs=epochs, seed=seed, show_progress=not as_json, device=device, precision=precision)
    _save(built, out)
    if wm_key is not None:
        result = assess(model, wm_key, dataset, steps=report.steps, samples_seen=report.samples_seen, seconds=report.seconds,
                        device=device)
        emit(result, as_json)
    else:
        acc = accuracy(model, dataset, device=device) if on_disk else accuracy(model, dataset.x_test, dataset.y_test, device=device)
        split = "training" if on_disk else "test"
        emit({"model": str(out), "arch": arch, f"{split}_accuracy": acc, "seconds": report.seconds} if as_json
             else f"trained {arch} on {dataset.name}: {split} accuracy {acc:.2%} in {report.seconds:.1f} s -> {out}", as_json)


def embed(
    model: Path = typer.Option(..., help="Trained model (.safetensors written by tracemark; with --arch, its weights)."),
    key: Path = typer.Option(..., help="Watermark key file."),
    out: Path = typer.Option(..., "--out", "-o", help="Marked model file to write (.safetensors)."),
    data: str = typer.Option("digits", help=data_help("Training data for the short fine-tuning", folders=True)),
    max_steps: int = typer.Option(2000, help="Upper bound on fine-tuning steps."),
    max_clean_drop: float = typer.Option(0.3, help="Allowed clean-accuracy drop, in points."),
    lr: float = typer.Option(5e-4, "--lr", help="Learning rate of the fine-tuning (lower keeps clean accuracy, needs more steps)."),
    keep_failed: bool = typer.Option(False, "--keep-failed", help="Write the model even if embedding does not reach its goal."),
    seed: int = typer.Option(0, help="Seed for batch sampling."),
    arch: Optional[str] = opts.ARCH_OPT,
    input_shape: Optional[str] = opts.INPUT_SHAPE_OPT,
    classes: Optional[int] = opts.CLASSES_OPT,
    device: Optional[str] = opts.DEVICE_OPT,
    precision: Optional[str] = opts.PRECISION_OPT,
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Embed a key into an already-trained model by short fine-tuning; exit 1 (nothing written) if it misses its goal."""
    from tracemark.data import load_model
    from tracemark.embedding import embed as embed_key

    if lr <= 0 or max_steps < 1:
        raise typer.BadParameter("--lr must be positive and --max-steps at least 1")
    wm_key = load_key(key)
    built = None
    if arch is not None:
        built = arch_model(arch, model, input_shape, classes, default_shape=wm_key.input_shape,
                           default_classes=wm_key.num_classes)
    net = built.module if built is not None else load_model(model)
    report = embed_key(net, wm_key, opts.load_data(data, wm_key.input_shape), max_steps=max_steps, max_clean_drop=max_clean_drop / 100.0,
                       lr=lr, seed=seed, show_progress=not as_json, device=device, precision=precision)
    emit(report, as_json)
    if not report.reached_goal and not keep_failed:
        error_console.print(f"[bold red]error:[/] embedding did not reach its goal; nothing written to {out} "
                            f"(try --max-steps {2 * max_steps}, --lr {lr / 2:g} or a larger --max-clean-drop; "
                            "--keep-failed writes it anyway)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if built is not None:
        _save(built, out)
    else:
        from tracemark.data import save_model

        save_model(net, out)
    from tracemark.ledger import file_sha256, record_embedded

    record_event(ledger, record_embedded, file_sha256(out), wm_key.commitment(), report, model_name=out.name, quiet=as_json)
    if not report.reached_goal:
        error_console.print(f"[yellow]warning:[/] embedding did not reach its goal; wrote {out} anyway (--keep-failed)",
                            highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def export(
    model: Path = typer.Argument(..., help="Model (.safetensors written by tracemark; with --arch, its weights)."),
    out: Path = typer.Option(..., "--out", "-o", help="File to write: .onnx or .pt2 (torch.export)."),
    arch: Optional[str] = opts.ARCH_OPT,
    input_shape: Optional[str] = opts.INPUT_SHAPE_OPT,
    classes: Optional[int] = opts.CLASSES_OPT,
) -> None:
    """Export a model to ONNX or a torch.export program."""
    from tracemark.data import load_model, model_spec
    from tracemark.data.export import save_exported, save_onnx

    if arch is not None:
        built = arch_model(arch, model, input_shape, classes)
        net, shape = built.module, built.input_shape
    else:
        net = load_model(model)
        shape = model_spec(net).input_shape  # type: ignore[union-attr]
    if out.suffix == ".onnx":
        save_onnx(net, out, shape)
    elif out.suffix == ".pt2":
        save_exported(net, out, shape)
    else:
        raise typer.BadParameter("use a .onnx or .pt2 file name", param_hint="--out")
    console.print(f"wrote {out}")


def _save(built: BuiltModel, out: Path) -> None:
    """Write a built-in model as a tracemark model file, a factory's as plain weights (shape and classes only)."""
    from tracemark.data import save_model
    from tracemark.data.factories import save_weights

    if built.from_factory:
        save_weights(built.module, out, built.input_shape, built.num_classes)
    else:
        save_model(built.module, out)


def register(root: typer.Typer) -> None:
    """Add ``train``, ``embed`` and ``export``."""
    root.command("train")(train)
    root.command("embed")(embed)
    root.command("export")(export)
