"""``tracemark pack / inspect / unpack`` and the ``vendor`` and ``device`` groups (protected packages)."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Optional

import typer

from tracemark.cli._options import LEDGER_HELP, record_event

from tracemark.cli._output import emit, error_console
from tracemark.errors import PackageError

JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON.")
VENDOR_PUB_HELP = "Pin the vendor's public key (vendor.pub); default $TRACEMARK_VENDOR_PUB or ~/.config/tracemark/trusted-vendors/."
TRUST_ANY_HELP = "Open a package whose signer is not pinned (prints a warning: anyone could have signed it)."


@dataclass(frozen=True)
class Written:
    """Files a command wrote, with a note."""

    files: tuple[str, ...]
    note: str

    def to_dict(self) -> dict:
        return {"files": list(self.files), "note": self.note}

    def __str__(self) -> str:
        return "\n".join([*(f"wrote {f}" for f in self.files), self.note])


def _passphrase(env: Optional[str], ask: bool, confirm: bool = False) -> Optional[str]:
    if env:
        value = os.environ.get(env)
        if not value:
            raise PackageError(f"environment variable {env} is empty or unset; export the passphrase in it")
        return value
    if ask:
        return typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    return None


def _unlockers(passphrase_env: Optional[str], ask: bool, keys: list[Path], tpm: bool, tcti: str, machine: bool,
               required: bool = True) -> Optional[list]:
    from tracemark.package import MachineSecret, Passphrase, RecipientKey, TpmDevice, VendorKey

    unlockers: list = []
    secret = _passphrase(passphrase_env, ask)
    if secret is not None:
        unlockers.append(Passphrase(secret))
    unlockers += [RecipientKey.from_vendor(VendorKey.load(k)) for k in keys]
    if tpm:
        unlockers.append(TpmDevice(tcti))
    if machine:
        unlockers.append(MachineSecret())
    if not unlockers:
        if not required:
            return None
        raise PackageError("say how to open the package: --passphrase-env VAR, --ask-passphrase, --key FILE, --tpm or --machine")
    return unlockers


@contextmanager
def signer_warnings() -> Iterator[None]:
    """Show each :class:`UntrustedSignerWarning` raised inside as one visible warning line on stderr."""
    from tracemark.package.errors import UntrustedSignerWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UntrustedSignerWarning)
            yield
    finally:
        for w in caught:
            if issubclass(w.category, UntrustedSignerWarning):
                error_console.print(f"[bold yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _weight_coded(model: Path, registry: Path, master_key: Optional[Path], customer: str, strength: float,
                  ledger: Optional[Path], quiet: bool) -> tuple:
    """The base at ``model`` with ``customer``'s weight code added, and the registry (the customer added if new)."""
    from tracemark.cli._options import load_key
    from tracemark.data import load_model
    from tracemark.fingerprint import Registry, record_customer_code
    from tracemark.fingerprint.weights import weight_coded_copy
    from tracemark.ledger import file_sha256

    if master_key is None:
        raise typer.BadParameter("the weight code is derived from the master key: give --master-key with --registry",
                                 param_hint="--master-key")
    reg = Registry.open(registry)
    scheme = reg.scheme(load_key(master_key))
    reg.set_base(file_sha256(model))  # refuses a base other than the one the registry's copies were made from
    records = {r.id: r for r in reg.records()}
    if customer not in records:
        reg.add(scheme, customer)
        record_event(ledger, record_customer_code, scheme, customer, quiet=quiet)
    elif records[customer].model_sha256 and not (records[customer].report or {}).get("made_by") == "pack":
        raise PackageError(f"customer {customer!r} already has a trained copy in {registry} ({records[customer].model_path}); "
                           "pack that file instead (without --registry)")
    return weight_coded_copy(load_model(model), scheme, customer, strength), reg


def register(root: typer.Typer) -> None:
    """Add ``pack``, ``inspect``, ``unpack`` and the ``vendor`` / ``device`` groups to ``root``."""
    from tracemark.package.wrap.tpm import DEFAULT_PCRS, DEFAULT_TCTI

    passphrase_env_opt = typer.Option(None, "--passphrase-env", help="Read the passphrase from this environment variable.")
    ask_opt = typer.Option(False, "--ask-passphrase", help="Prompt for the passphrase.")
    key_opt = typer.Option([], "--key", help="A vendor/recipient private key file (repeatable).")
    tpm_opt = typer.Option(False, "--tpm", help="Unseal with this device's TPM.")
    tcti_opt = typer.Option(DEFAULT_TCTI, "--tcti", help="TSS TCTI of the TPM, e.g. swtpm:host=127.0.0.1,port=2321.")
    machine_opt = typer.Option(False, "--machine", help="Use this machine's derived secret (weak).")
    vendor_pub_opt = typer.Option(None, "--vendor-pub", help=VENDOR_PUB_HELP)
    trust_any_opt = typer.Option(False, "--trust-any-signer", help=TRUST_ANY_HELP)

    @root.command("pack")
    def pack(
        model: Path = typer.Argument(..., help="Model file: .safetensors (tracemark), .onnx or torch.export .pt2."),
        out: Path = typer.Option(..., "--out", help="Package file to write."),
        vendor_key: Path = typer.Option(..., "--vendor-key", help="Vendor key file that signs the package."),
        customer: str = typer.Option(..., "--customer", help="Customer id the licence is for."),
        days: int = typer.Option(365, "--days", help="Licence length in days from --not-before."),
        not_before: Optional[str] = typer.Option(None, "--not-before", help="Licence start, ISO 8601 UTC (default now)."),
        devices: list[str] = typer.Option([], "--device", help="Allowed device id (repeatable; none = any device)."),
        output: str = typer.Option("label", "--output", help="Output policy: label, top_k or probabilities."),
        top_k: Optional[int] = typer.Option(None, "--top-k", help="k for --output top_k."),
        decimals: Optional[int] = typer.Option(None, "--decimals", help="Round returned scores to this many decimals."),
        passphrase_env: Optional[str] = passphrase_env_opt,
        ask: bool = ask_opt,
        recipients: list[Path] = typer.Option([], "--recipient", help="Wrap for this public key file (repeatable)."),
        for_vendor: bool = typer.Option(True, "--for-vendor/--no-for-vendor", help="Also wrap for the vendor's own key."),
        tpm_devices: list[Path] = typer.Option([], "--tpm-device", help="Seal to this enrolled device's TPM (enrolment file)."),
        machine_devices: list[Path] = typer.Option([], "--machine-device", help="Bind to this enrolled device's machine secret (weak)."),
        model_id: Optional[str] = typer.Option(None, "--model-id", help="Model id in the manifest (default: file name)."),
        chunk_mib: int = typer.Option(4, "--chunk-mib", help="Chunk size in MiB."),
        registry: Optional[Path] = typer.Option(None, "--registry", help="Customer registry (tracemark fingerprint's): pack the base MODEL with --customer's weight code added (no training), recorded there as the customer's copy; needs --master-key."),
        master_key: Optional[Path] = typer.Option(None, "--master-key", help="With --registry: the master watermark key the registry was made with."),
        weight_strength: float = typer.Option(0.02, "--weight-strength", help="With --registry: strength of the weight code (times each tensor's RMS)."),
        ledger: Optional[Path] = typer.Option(None, "--ledger", help=LEDGER_HELP),
        as_json: bool = JSON_OPT,
    ) -> None:
        """Encrypt, license and sign a model into one package file (with --registry: a customer's weight-coded copy of the base)."""
        from tracemark.package import (
            DeviceEnrolment, Licence, MachineWrap, OutputPolicy, PassphraseWrap, RecipientWrap, TpmWrap, VendorKey,
            VendorPublicKey, pack_model,
        )

        vendor = VendorKey.load(vendor_key)
        start = datetime.fromisoformat(not_before.replace("Z", "+00:00")) if not_before else datetime.now(timezone.utc)
        licence = Licence(customer, start, start + timedelta(days=days), tuple(devices), OutputPolicy(output, top_k, decimals))
        wraps: list = []
        secret = _passphrase(passphrase_env, ask, confirm=True)
        if secret is not None:
            wraps.append(PassphraseWrap(secret))
        if for_vendor:
            wraps.append(RecipientWrap(vendor.public))
        wraps += [RecipientWrap(VendorPublicKey.load(r)) for r in recipients]
        wraps += [TpmWrap(DeviceEnrolment.load(p)) for p in tpm_devices]
        wraps += [MachineWrap(DeviceEnrolment.load(p)) for p in machine_devices]
        from tracemark.ledger import file_sha256, record_packaged

        coded = None if registry is None else _weight_coded(model, registry, master_key, customer, weight_strength, ledger, as_json)
        result = pack_model(model if coded is None else coded[0], out, vendor=vendor, licence=licence, wraps=wraps,
                            model_id=model_id, chunk_size=chunk_mib << 20)
        if coded is not None:
            reg = coded[1]
            reg.set_copy(customer, "", result.model_sha256, {"made_by": "pack", "weight_strength": weight_strength,
                                                             "black_box_code": False, "base_sha256": file_sha256(model)})
            reg.set_package(customer, str(out), file_sha256(out))
        record_event(ledger, record_packaged, file_sha256(out), customer,
                     model_sha256=file_sha256(model) if coded is None else result.model_sha256,
                     licence=licence.to_dict() if hasattr(licence, "to_dict") else None, quiet=as_json)
        emit(result, as_json)

    @root.command("inspect")
    def inspect(
        package: Path = typer.Argument(..., help="Package file."),
        vendor_pub: Optional[Path] = vendor_pub_opt,
        trust_any_signer: bool = trust_any_opt,
        passphrase_env: Optional[str] = passphrase_env_opt,
        ask: bool = ask_opt,
        keys: list[Path] = key_opt,
        tpm: bool = tpm_opt,
        tcti: str = tcti_opt,
        machine: bool = machine_opt,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Check a package's integrity and show its manifest and licence (exit 2 on any damage).

        Without a key: signer, signature, manifest, stanzas, chunk table and every chunk tag. With a way to
        open it (--key, --passphrase-env, ...): also decrypts every chunk in memory to check its contents.
        """
        from tracemark.package import inspect_package

        unlockers = _unlockers(passphrase_env, ask, keys, tpm, tcti, machine, required=False)
        with signer_warnings():
            info = inspect_package(package, vendor_pub, trust_any_signer=trust_any_signer, unlockers=unlockers)
        emit(info, as_json)

    @root.command("unpack")
    def unpack(
        package: Path = typer.Argument(..., help="Package file."),
        out: Path = typer.Option(..., "--out", help="Where to write the DECRYPTED model (explicit on purpose)."),
        passphrase_env: Optional[str] = passphrase_env_opt,
        ask: bool = ask_opt,
        keys: list[Path] = key_opt,
        tpm: bool = tpm_opt,
        tcti: str = tcti_opt,
        machine: bool = machine_opt,
        vendor_pub: Optional[Path] = vendor_pub_opt,
        trust_any_signer: bool = trust_any_opt,
        as_json: bool = JSON_OPT,
    ) -> None:
        """Decrypt a package to a plain model file (after all checks). Leaves an unprotected copy."""
        from tracemark.package import unpack_package

        unlockers = _unlockers(passphrase_env, ask, keys, tpm, tcti, machine)
        with signer_warnings(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="writing the decrypted model")
            path = unpack_package(package, out, unlockers, vendor_key=vendor_pub, trust_any_signer=trust_any_signer)
        error_console.print(f"[bold yellow]warning:[/] wrote the decrypted model to {out}; this copy is unprotected")
        emit(Written((str(path),), "decrypted model written (owner-only permissions); delete it when done"), as_json)

    vendor_app = typer.Typer(help="Vendor signing/recipient keys.", no_args_is_help=True)
    root.add_typer(vendor_app, name="vendor")

    @vendor_app.command("keygen")
    def vendor_keygen(
        out: Path = typer.Option(..., "--out", help="Path prefix: writes PREFIX.key (secret) and PREFIX.pub."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
        as_json: bool = JSON_OPT,
    ) -> None:
        """Create a vendor key: Ed25519 for signing packages, X25519 to be a wrapping recipient."""
        from tracemark.package import VendorKey

        key_path, pub_path = Path(f"{out}.key"), Path(f"{out}.pub")
        if not force and (key_path.exists() or pub_path.exists()):
            raise PackageError(f"{key_path} or {pub_path} exists; pass --force to replace it (old packages need the old key)")
        key = VendorKey.generate()
        key.save(key_path)
        key.public.save(pub_path)
        emit(Written((str(key_path), str(pub_path)), f"vendor key {key.public.key_id}: keep {key_path} secret, give out {pub_path}"), as_json)

    device_app = typer.Typer(help="Device identity and enrolment (run on the customer's device).", no_args_is_help=True)
    root.add_typer(device_app, name="device")

    @device_app.command("id")
    def device_id_cmd(as_json: bool = JSON_OPT) -> None:
        """Print this device's id (what a licence's allowed devices list)."""
        from tracemark.package import device_id

        ident = device_id()
        if as_json:
            emit({"device_id": ident}, True)
        else:
            emit(ident, False)

    @device_app.command("enrol")
    def device_enrol(
        out: Path = typer.Option(..., "--out", help="Enrolment file to write and send to the vendor."),
        tpm: bool = typer.Option(False, "--tpm", help="Include the TPM (storage key + PCR policy)."),
        tcti: str = tcti_opt,
        pcrs: str = typer.Option(DEFAULT_PCRS, "--pcrs", help="PCRs the sealed key depends on, e.g. sha256:0,2,7."),
        machine_secret: bool = typer.Option(True, "--machine-secret/--no-machine-secret", help="Include the (weak) machine secret."),
        as_json: bool = JSON_OPT,
    ) -> None:
        """Enrol this device: writes what the vendor needs to bind packages to it."""
        from tracemark.package import enrol_device, enrol_tpm

        enrolment = enrol_device(machine_secret, enrol_tpm(tcti, pcrs) if tpm else None)
        enrolment.save(out)
        note = f"{enrolment}; send {out} to the vendor"
        if machine_secret:
            note += " over a private channel (it holds the machine secret)"
        emit(Written((str(out),), note), as_json)
