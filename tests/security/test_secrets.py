"""Issue 15, item 11: the owner key is sealed with scrypt, and no secret is ever a command-line value."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from tracemark.cli import build_app
from tracemark.cli._options import parse_headers
from tracemark.errors import KeyFileError, WrongPassphraseError
from tracemark.ledger import OwnerIdentity

SECRET_WORDS = ("passphrase", "secret", "token", "password", "api_key", "api-key")
runner = CliRunner()


def test_owner_key_is_sealed_with_scrypt(tmp_path: Path) -> None:
    owner = OwnerIdentity.generate()
    path = owner.save(tmp_path / "owner.key", "correct horse battery staple")
    document = json.loads(path.read_text())  # a PKCS#8 PEM (PBKDF2, 2,048 rounds) is not JSON
    assert document["format"] == "tracemark-owner-key"
    encryption = document["encryption"]
    assert encryption["kdf"] == "scrypt" and encryption["cipher"] == "AES-256-GCM"
    assert encryption["n"] >= 2**15 and encryption["r"] >= 8
    assert document["public_key"] == owner.public_key.public_bytes_raw().hex()
    assert OwnerIdentity.load(path, "correct horse battery staple").fingerprint() == owner.fingerprint()
    with pytest.raises(WrongPassphraseError):
        OwnerIdentity.load(path, "wrong")

    # the parameters are bound into the tag, and hostile ones are refused before any work
    document["encryption"]["n"] = 2**14
    path.write_text(json.dumps(document))
    with pytest.raises(WrongPassphraseError):
        OwnerIdentity.load(path, "correct horse battery staple")
    document["encryption"]["n"] = 2**30
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="scrypt"):
        OwnerIdentity.load(path, "correct horse battery staple")


def test_legacy_pem_owner_key_loads_with_a_warning_and_rekeys(tmp_path: Path) -> None:
    from tracemark.ledger.errors import LegacyOwnerKeyWarning

    owner = OwnerIdentity.generate()
    legacy = tmp_path / "owner.pem"
    legacy.write_bytes(owner.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.BestAvailableEncryption(b"old pass")))
    with pytest.warns(LegacyOwnerKeyWarning, match="rekey"):
        assert OwnerIdentity.load(legacy, "old pass").fingerprint() == owner.fingerprint()

    secret = tmp_path / "new-pass.txt"
    secret.write_text("new pass\n")
    env = {"TRACEMARK_OWNER_PASSPHRASE": "old pass"}
    result = runner.invoke(build_app(), ["ledger", "rekey", "--owner-key", str(legacy), "--new-passphrase-file", str(secret)], env=env)
    assert result.exit_code == 0, result.output
    assert "PBKDF2" in result.output  # the warning, as one line
    assert json.loads(legacy.read_text())["encryption"]["kdf"] == "scrypt"
    assert OwnerIdentity.load(legacy, "new pass").fingerprint() == owner.fingerprint()


def test_owner_passphrase_comes_from_a_file_or_a_named_variable(tmp_path: Path) -> None:
    from tracemark.errors import SecretMissingError

    app = build_app()
    secret = tmp_path / "pass.txt"
    secret.write_text("from a file\n")
    result = runner.invoke(app, ["ledger", "init", str(tmp_path / "ledger"), "--owner-key", str(tmp_path / "owner.key"),
                                 "--passphrase-file", str(secret)], env={"TRACEMARK_OWNER_PASSPHRASE": None})
    assert result.exit_code == 0, result.output
    assert OwnerIdentity.load(tmp_path / "owner.key", "from a file")

    result = runner.invoke(app, ["ledger", "rekey", "--owner-key", str(tmp_path / "owner.key"), "--passphrase-env", "MY_PASS"],
                           env={"MY_PASS": "from a file", "TRACEMARK_OWNER_PASSPHRASE": None})
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["ledger", "rekey", "--owner-key", str(tmp_path / "owner.key"), "--passphrase-env", "UNSET_PASS"],
                           env={"UNSET_PASS": None})
    assert isinstance(result.exception, SecretMissingError) and "$UNSET_PASS" in str(result.exception)


def _options(command, path: str = "tracemark"):  # noqa: ANN001 -- typer's (vendored) click command
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _options(sub, f"{path} {name}")
        return
    for param in command.params:
        if param.param_type_name == "option":
            yield path, param


def _takes_secret_value(option) -> bool:  # noqa: ANN001
    """True when the option's value would be the secret itself (not a flag, file or variable name)."""
    names = [option.name or "", *option.opts, *option.secondary_opts]
    if not any(word in name.lower() for name in names for word in SECRET_WORDS):
        return False
    annotation = option.type_descriptor.annotation
    if option.is_flag or annotation is bool or annotation is Path or Path in typing.get_args(annotation):
        return False
    return not all(opt.endswith(("-env", "-file")) for opt in option.opts)


def test_no_cli_option_takes_a_secret_value() -> None:
    root = typer.main.get_command(build_app())
    options = list(_options(root))
    assert len(options) > 100  # every command was walked
    offenders = [f"{path} {'/'.join(option.opts)}" for path, option in options if _takes_secret_value(option)]
    assert offenders == [], f"options whose value is a secret (visible in ps): {offenders}"


def test_header_secret_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracemark.errors import SecretMissingError

    monkeypatch.setenv("SUSPECT_KEY", "s3cret")
    assert parse_headers(["X-API-Key: $SUSPECT_KEY", "Accept: text/plain"]) == {"X-API-Key": "s3cret", "Accept": "text/plain"}
    monkeypatch.delenv("SUSPECT_KEY")
    with pytest.raises(SecretMissingError, match=r"\$SUSPECT_KEY"):
        parse_headers(["X-API-Key: $SUSPECT_KEY"])
