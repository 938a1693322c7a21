"""``tracemark robustness``: run an attack suite against a marked model and write an HTML + JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tracemark.cli._options import data_help, load_key
from tracemark.cli._output import console, emit
from tracemark.cli.fingerprint import EXECUTOR_OPT, RAY_ADDRESS_OPT


def robustness(
    suite: str = typer.Option("standard", help="Attack suite: quick | standard."),
    data: str = typer.Option("digits", "--data", help=data_help("Dataset", folders=True) + " A folder is read item by item: "
                             "a seeded tenth is held out to measure accuracy (or give --test-data), the thief gets "
                             "--thief-size of the rest."),
    test_data: Optional[Path] = typer.Option(None, "--test-data", help="With a --data folder: a folder of held-out "
                                             "images to measure accuracy on (default: a seeded tenth of --data)."),
    dataset_alias: Optional[str] = typer.Option(None, "--dataset", hidden=True, help="Old name of --data."),
    model: Optional[Path] = typer.Option(None, help="Marked model (.safetensors); with --key. Default: train and mark one."),
    key: Optional[Path] = typer.Option(None, help="The model's watermark key file; with --model."),
    mark: str = typer.Option("baseline", help="Without --model: mark configuration to build (baseline | strong)."),
    thief_size: Optional[int] = typer.Option(None, help="Thief's images: the last N training images (default 1/6 of them; "
                                             "of a folder, N of a seeded shuffle)."),
    ood_size: int = typer.Option(2000, help="Thief's out-of-domain query pool size."),
    null_profile: Optional[Path] = typer.Option(None, help="Null profile JSON (models cached beside it) for the empirical null."),
    budget: float = typer.Option(2.0, help="Accuracy budget in points: a removal must keep the thief within it."),
    alpha: float = typer.Option(1e-9, help="Verification false-accusation rate."),
    workers: int = typer.Option(1, help="Parallel worker processes for the attacks (on a GPU they run one after another)."),
    executor: str = EXECUTOR_OPT,
    ray_address: Optional[str] = RAY_ADDRESS_OPT,
    device: Optional[str] = typer.Option(None, "--device", help="Where the owner's model and the thief's attacks train: cuda, cuda:N, mps or cpu (default: CUDA, else MPS, else CPU)."),
    lineage: Optional[Path] = typer.Option(None, "--lineage", help="Also test every stolen model with this lineage fingerprint "
                                           "(tracemark lineage new) and report which evidence survived each attack."),
    out: Path = typer.Option(Path("robustness-report"), "--out", "-o", help="Folder for report.html, result.json and caches."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON result."),
) -> None:
    """Attack a marked model with the suite, judge each attack by the SoK protocol, and write a report."""
    import torch

    from tracemark.data import load_dataset, load_model
    from tracemark.data.devices import resolve_device
    from tracemark.executor import check_choice, executor_from
    from tracemark.lab import NullProfile, make_suite, run_suite
    from tracemark.lab.victim import CONFIGS, marked_victim, out_of_domain_pool, split_thief
    from tracemark.report import robustness_report

    data = dataset_alias or data
    if (model is None) != (key is None):
        raise typer.BadParameter("give both --model and --key, or neither")
    if mark not in CONFIGS:
        raise typer.BadParameter(f"choose one of {', '.join(CONFIGS)}", param_hint="--mark")
    dev = resolve_device(device)  # a device that is not here: one line, before any work
    check_choice(executor, ray_address)
    evidence = []
    if lineage is not None:  # a bad lineage file: one line, before any training
        from tracemark.lineage import LineageEvidence

        evidence.append(LineageEvidence.load(lineage))
    torch.set_num_threads(1)
    victim, wm_key = (load_model(model), load_key(key)) if model is not None and key is not None else (None, None)
    if test_data is not None and not Path(data).is_dir():
        raise typer.BadParameter("--test-data goes with a --data folder", param_hint="--test-data")
    if Path(data).is_dir() and data.lower().replace("_", "-") not in ("digits", "mnist", "fashion-mnist"):
        name, owner, thief, test, classes = _folder_split(data, test_data, thief_size, ood_size, wm_key, dev)
    else:
        dataset = load_dataset(data)
        name, test, classes = dataset.name, (dataset.x_test, dataset.y_test), dataset.num_classes
        n_thief = thief_size or len(dataset.x_train) // 6
        owner, thief = split_thief(dataset, n_thief, out_of_domain_pool(dataset.name, ood_size, dataset.input_shape), device=dev)
    if victim is not None:
        info = {"model": str(model)}
    else:
        victim, wm_key, info = marked_victim(owner, CONFIGS[mark], out / "cache", show_progress=not as_json, device=dev,
                                             test=test, num_classes=classes, name=name)
    null = None
    if null_profile is not None:
        profile = NullProfile.load(null_profile)
        if not profile.covers(wm_key):
            profile.add_key(wm_key, profile.load_references(null_profile.parent))
            profile.save(null_profile)
        null = profile.null_for(wm_key)
    with executor_from(executor, workers=workers, address=ray_address) as runner:
        result = run_suite(make_suite(suite, len(thief.x), len(thief.ood_x)), victim, wm_key, test,
                           thief, suite=suite, dataset=name, null=null, alpha=alpha, budget_points=budget,
                           show_progress=not as_json, config={"mark": info}, executor=runner,
                           evidence=evidence)
    out.mkdir(parents=True, exist_ok=True)
    result.save_json(out / "result.json")
    robustness_report(result, out / "report.html", wm_key.triggers())
    emit(result, as_json)
    if not as_json:
        console.print(f"report -> {out / 'report.html'}  (JSON: {out / 'result.json'})")


def register(root: typer.Typer) -> None:
    """Add ``robustness``."""
    root.command("robustness")(robustness)


def _folder_split(data: str, test_data: Optional[Path], thief_size: Optional[int], ood_size: int, wm_key, device):
    """A --data folder, read item by item: (name, the owner's and the thief's parts, the test set, the class count).

    The items are shuffled with seed 0 (a folder lists its classes one after another); a tenth is held out for
    accuracy unless ``test_data`` is given, and the thief gets the last ``thief_size`` (default a sixth) of the rest."""
    import numpy as np
    from torch.utils.data import Subset

    from tracemark.cli._options import load_data
    from tracemark.errors import DatasetError
    from tracemark.lab.victim import out_of_domain_pool, split_thief

    folder = load_data(data, None if wm_key is None else wm_key.input_shape)
    order = np.random.default_rng(0).permutation(len(folder)).tolist()
    if test_data is not None:
        test = load_data(str(test_data), folder.input_shape)
        if test.num_classes != folder.num_classes:
            raise DatasetError(f"--test-data {test_data}: {test.num_classes} classes, --data has {folder.num_classes}")
        rest = Subset(folder, order)
    else:
        held = max(1, len(folder) // 10)
        test, rest = Subset(folder, order[:held]), Subset(folder, order[held:])
    n_thief = thief_size or len(rest) // 6
    owner, thief = split_thief(rest, n_thief, out_of_domain_pool(folder.name, ood_size, folder.input_shape), device=device)
    return folder.name, owner, thief, test, folder.num_classes
