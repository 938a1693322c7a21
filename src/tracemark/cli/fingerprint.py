"""``tracemark fingerprint`` (one marked copy per customer) and ``tracemark trace`` (which customer leaked it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from tracemark.cli import _options as suspect
from tracemark.cli._options import LEDGER_HELP, arch_model, load_key, record_event, save_transcript, suspect_target
from tracemark.cli._output import console, emit
from tracemark.cli.responses import open_evidence, record_clone_check

REGISTRY_NAME = "registry.sqlite"
EXECUTOR_OPT = typer.Option("local", "--executor", help="Where the tasks run: local (forked processes on this machine, --workers of them) or ray (a Ray cluster: --ray-address, else $TRACEMARK_RAY_ADDRESS, else a Ray started here with --workers CPUs; pip install tracemark[ray]).")
RAY_ADDRESS_OPT = typer.Option(None, "--ray-address", help="With --executor ray: the cluster's address as ray.init takes it (ray://head:10001, head:6379 or auto; default $TRACEMARK_RAY_ADDRESS).")


def fingerprint(
    key: Path = typer.Option(..., help="Master watermark key (a content key); customer codes are derived from it."),
    model: Path = typer.Option(..., help="Trained base model (.safetensors written by tracemark)."),
    customers: Path = typer.Option(..., help="Text file of customer ids, one per line ('#' starts a comment)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the copies (<customer>.safetensors)."),
    data: str = typer.Option("digits", "--data", help=suspect.data_help("Training data for the fine-tunes", folders=True)),
    registry: Optional[Path] = typer.Option(None, help=f"Customer registry (SQLite; default OUT/{REGISTRY_NAME}); new customers are added to an existing one, customers that already have a copy are refused."),
    drawings: Optional[int] = typer.Option(None, help="Secret drawings in the scheme (default ceil(100/classes)); only for a new registry."),
    workers: int = typer.Option(2, help="Processes making copies in parallel (one torch thread each; on a GPU the copies are made one after another)."),
    executor: str = EXECUTOR_OPT,
    ray_address: Optional[str] = RAY_ADDRESS_OPT,
    device: Optional[str] = typer.Option(None, "--device", help="Where the base's body and the fine-tunes run: cuda, cuda:N, mps or cpu (default: CUDA, else MPS, else CPU)."),
    lr: float = typer.Option(1e-3, help="Learning rate of each customer's fine-tune (of the model's head)."),
    max_steps: int = typer.Option(3000, help="Most fine-tuning steps per customer."),
    max_clean_drop: float = typer.Option(0.003, help="Largest clean-accuracy drop allowed per copy (fraction)."),
    code_accuracy: float = typer.Option(0.9, help="Stop a customer's fine-tune once this fraction of the tracing queries carry its code."),
    seed: int = typer.Option(0, help="Seed of the feature pools and the fine-tunes' batch order."),
    weight_strength: float = typer.Option(0.02, help="Strength of the weight code (times each tensor's RMS) added to every copy; 0 leaves it out."),
    vendor_key: Optional[Path] = typer.Option(None, "--vendor-key", help="Also pack each copy as OUT/<customer>.tmpkg, signed by this vendor key and licensed to the customer."),
    days: int = typer.Option(365, "--days", help="With --vendor-key: licence length in days from now."),
    passphrase_env: Optional[str] = typer.Option(None, "--passphrase-env", help="With --vendor-key: also wrap each package for the passphrase in this environment variable."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Make one marked copy of a base model per customer, each carrying its own code and keeping the master key's
    trigger mark of the base (exit code 1 if a copy missed its code goal)."""
    import torch

    from tracemark.cli._options import load_data
    from tracemark.data import load_model
    from tracemark.data.devices import resolve_device
    from tracemark.executor import check_choice, executor_from
    from tracemark.fingerprint import FingerprintScheme, Registry, TrainSettings, fanout, read_customers_file, record_customer_code
    from tracemark.fingerprint.errors import DuplicateCustomerError
    from tracemark.ledger import record_embedded

    dev = resolve_device(device)  # a device that is not here: one line, before any work
    check_choice(executor, ray_address)
    ids = read_customers_file(customers)
    wm_key = load_key(key)
    registry_path = registry or out / REGISTRY_NAME
    if registry_path.exists():
        reg = Registry.open(registry_path)
        scheme = reg.scheme(wm_key)
        if drawings is not None and drawings != scheme.n_drawings:
            raise typer.BadParameter(f"the registry's scheme has {scheme.n_drawings} drawings", param_hint="--drawings")
        made = {r.id for r in reg.records() if r.model_sha256} & set(ids)
        if made:
            raise DuplicateCustomerError(f"already registered with a copy in {registry_path}: {', '.join(sorted(made))} "
                                         "(leave them out of the customers file to make the others)")
    else:
        scheme = FingerprintScheme.from_key(wm_key, drawings)
        reg = Registry.create(registry_path, scheme)
    dataset = load_data(data, wm_key.input_shape)
    base = load_model(model)
    from tracemark.ledger import file_sha256

    reg.set_base(file_sha256(model))  # the weight test compares suspects with this base; refuses another one
    if executor == "local" and workers > 1:
        torch.set_num_threads(1)  # workers are forked from this process: keep its OpenMP pool single-threaded
    settings = TrainSettings(lr=lr, max_steps=max_steps, max_clean_drop=max_clean_drop, target_code_accuracy=code_accuracy,
                             seed=seed, weight_strength=weight_strength)
    registered = set(reg.customers())
    new = [cid for cid in ids if cid not in registered]  # the others were registered by an interrupted run
    reg.add_many(scheme, new)
    for cid in new:
        record_event(ledger, record_customer_code, scheme, cid, quiet=as_json)

    pack = _packer(vendor_key, days, passphrase_env, out) if vendor_key is not None else None

    def on_copy(report) -> None:
        reg.set_copy(report.customer, report.model_path, report.model_sha256, report.to_dict())
        record_event(ledger, record_embedded, report.model_sha256, wm_key.commitment(), report,
                     model_name=f"customer copy: {report.customer}", quiet=as_json)
        if pack is not None:
            from tracemark.ledger import file_sha256, record_packaged

            packed = pack(report.customer, Path(report.model_path))
            reg.set_package(report.customer, str(packed.path), file_sha256(packed.path))
            record_event(ledger, record_packaged, file_sha256(packed.path), report.customer,
                         model_sha256=report.model_sha256, key_commitment=wm_key.commitment(),
                         licence=packed.licence.to_dict(), quiet=as_json)

    with executor_from(executor, workers=workers, address=ray_address) as runner:
        result = fanout(base, scheme, ids, dataset, out, settings=settings, on_copy=on_copy, show_progress=not as_json,
                        device=dev, executor=runner)
    if not as_json:
        console.print(f"registry: {reg}")
    emit(result, as_json)
    if not all(c.reached_goal for c in result.copies):
        raise typer.Exit(1)  # every copy is written and registered, within the clean budget, but some carry less code


def _packer(vendor_key: Path, days: int, passphrase_env: Optional[str], out: Path):
    """``pack(customer, model_path)``: a protected package licensed to the customer, in ``out``."""
    import os
    from datetime import datetime, timedelta, timezone

    from tracemark.errors import PackageError
    from tracemark.package import Licence, PassphraseWrap, RecipientWrap, VendorKey, pack_model

    vendor = VendorKey.load(vendor_key)
    wraps: list = [RecipientWrap(vendor.public)]
    if passphrase_env:
        secret = os.environ.get(passphrase_env)
        if not secret:
            raise PackageError(f"environment variable {passphrase_env} is empty or unset; export the passphrase in it")
        wraps.append(PassphraseWrap(secret))

    def pack(customer: str, model_path: Path):
        start = datetime.now(timezone.utc)
        licence = Licence(customer, start, start + timedelta(days=days))
        return pack_model(model_path, out / f"{customer}.tmpkg", vendor=vendor, licence=licence, wraps=wraps,
                          model_id=f"{model_path.stem} (customer copy)")

    return pack


def trace(
    key: Path = typer.Option(..., help="Master watermark key the customer codes were derived from."),
    registry: Path = typer.Option(..., help="Customer registry made by 'tracemark fingerprint'."),
    model: Optional[Path] = suspect.MODEL_OPT,
    url: Optional[str] = suspect.URL_OPT,
    field: str = suspect.FIELD_OPT,
    template: Optional[str] = suspect.TEMPLATE_OPT,
    header: list[str] = suspect.HEADER_OPT,
    api_key: Optional[str] = suspect.API_KEY_OPT,
    budget: Optional[int] = suspect.BUDGET_OPT,
    rate: Optional[float] = suspect.RATE_OPT,
    batch_size: int = suspect.BATCH_OPT,
    timeout: float = suspect.TIMEOUT_OPT,
    transcript: Optional[Path] = suspect.TRANSCRIPT_OPT,
    arch: Optional[str] = suspect.ARCH_OPT,
    input_shape: Optional[str] = suspect.INPUT_SHAPE_OPT,
    classes: Optional[int] = suspect.CLASSES_OPT,
    base: Optional[Path] = typer.Option(None, "--base", help="With --model: the base model the copies were made from; also runs the weight test (checked against the registry's base hash)."),
    no_align: bool = typer.Option(False, "--no-align", help="With --base: compare the suspect's weights as they are, "
                                  "without first aligning its hidden units (permuted, rescaled, added) to the base's."),
    alpha: float = typer.Option(1e-9, help="False-accusation rate over all customers together (split between the two tests with --base)."),
    max_queries: Optional[int] = typer.Option(None, help="Ask at most this many queries (default: all, D×classes)."),
    responses_db: Optional[Path] = typer.Option(None, "--responses-db", help="Also ask the suspect the marked answers of "
                                                "`tracemark serve --marking` (store of marked responses) and name the API client a clone learned from."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Ask a suspect the tracing queries (and, with --base, compare its weights) and name the customer whose copy it is, with a p-value."""
    from tracemark.fingerprint import Registry
    from tracemark.fingerprint.trace import record_trace, trace as run_trace

    if base is not None and model is None:
        raise typer.BadParameter("the weight test needs the suspect's weights: give --model with --base", param_hint="--base")
    wm_key = load_key(key)
    target = suspect_target(model, url, num_classes=wm_key.num_classes, field=field, template=template, header=header,
                            api_key=api_key, budget=budget, rate=rate, batch_size=batch_size, timeout=timeout,
                            arch=arch, input_shape=wm_key.input_shape, shape_option=input_shape, classes_option=classes)
    reg = Registry.open(registry)
    scheme = reg.scheme(wm_key)
    base_model = None
    if base is not None:
        from tracemark.data import load_model
        from tracemark.ledger import file_sha256

        reg.check_base(file_sha256(base))
        if arch is not None:  # the base is built by the same factory as the suspect
            base_model = arch_model(arch, base, input_shape, classes, default_shape=wm_key.input_shape,
                                    default_classes=wm_key.num_classes).module
        else:
            base_model = load_model(base)
    evidence = open_evidence(responses_db) if responses_db is not None else None  # before any query
    clones = None
    try:
        result = run_trace(scheme, reg.customers(), target, alpha=alpha, max_queries=max_queries, batch_size=batch_size,
                           base=base_model, align=not no_align)
        if evidence is not None:
            from tracemark.extraction.clones import check_clone

            clones = check_clone(evidence[0], target, show_progress=not as_json)
    finally:
        save_transcript(target, transcript, as_json)
    record_event(ledger, record_trace, result, transcript=transcript if url is not None else None, quiet=as_json)
    if clones is None or evidence is None:
        emit(result, as_json)
        return
    record_event(ledger, record_clone_check, clones, evidence[1], quiet=as_json)
    emit(TraceAndCloneCheck(result, clones), as_json)


@dataclass(frozen=True)
class TraceAndCloneCheck:
    """``tracemark trace --responses-db``: which customer's copy the suspect is, and which API client it learned from."""

    trace: Any
    clone_check: Any

    def to_dict(self) -> dict:
        return {"trace": self.trace.to_dict(), "clone_check": self.clone_check.to_dict()}

    def __str__(self) -> str:
        return f"{self.trace}\n\n{self.clone_check}"


def register(root: typer.Typer) -> None:
    """Add ``fingerprint`` and ``trace``."""
    root.command("fingerprint")(fingerprint)
    root.command("trace")(trace)
