"""Issue 15, packages: signer trust is explicit (finding 2), key-wrap parameters are bounded (finding 5),
``inspect`` checks all keyless integrity (finding 7), and a byte-flip fuzz of the load path gives only named errors."""

from __future__ import annotations

import json
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest
from safetensors.torch import save

from tests.package.conftest import FAST_N, NOW, PASSPHRASE, make_licence
from tracemark._util.canonical import canonical_json
from tracemark.errors import TracemarkError
from tracemark.package import (
    KeyWrapBoundsError,
    KeyWrapStanzaError,
    Passphrase,
    PassphraseWrap,
    RecipientKey,
    RecipientWrap,
    UntrustedSignerError,
    UntrustedSignerWarning,
    VendorKey,
    inspect_package,
    load_package,
    pack_model,
)
from tracemark.package.format import END, Manifest, read_container


@pytest.fixture(autouse=True)
def _no_ambient_pins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRACEMARK_VENDOR_PUB", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture(scope="module")
def vendor() -> VendorKey:
    return VendorKey.generate()


@pytest.fixture()
def vendor_pub(tmp_path: Path, vendor: VendorKey) -> Path:
    return vendor.public.save(tmp_path / "vendor.pub")


@pytest.fixture()
def package(tmp_path: Path, vendor: VendorKey) -> Path:
    """A small package (5 chunks) a customer opens with a passphrase; the vendor can open it too."""
    import torch

    data = save({"w": torch.arange(300, dtype=torch.float32)})
    out = tmp_path / "pkg.tmpkg"
    pack_model(data, out, vendor=vendor, licence=make_licence(),
               wraps=[PassphraseWrap(PASSPHRASE, n=FAST_N), RecipientWrap(vendor.public)], chunk_size=256)
    return out


def _parts(path: Path) -> tuple[bytes, dict]:
    """(the bytes before the manifest, the manifest document)."""
    raw = path.read_bytes()
    with path.open("rb") as f:
        c = read_container(f.fileno(), str(path))
    return raw[: c.payload_offset + c.payload_size], json.loads(c.manifest_bytes)


def _write_signed(path: Path, head: bytes, document: dict, signer: VendorKey) -> Path:
    manifest = canonical_json(document)
    path.write_bytes(head + manifest + signer.sign(manifest) + len(manifest).to_bytes(8, "little") + END)
    return path


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str, env: dict | None = None) -> tuple[int, str, str]:
    """Run the real ``tracemark`` entry point in-process: (exit code, stdout, stderr)."""
    from tracemark.cli import main

    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["tracemark", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def _one_error_line(err: str, name: str) -> None:
    assert "Traceback" not in err and err.count("error:") == 1 and err.lstrip().startswith(f"error: {name}"), err


# -- finding 2: signer trust -------------------------------------------------------------------------------------


def test_unpinned_signer_is_refused_by_default_and_loads_only_with_the_opt_in(
    package: Path, vendor: VendorKey, vendor_pub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    with pytest.raises(UntrustedSignerError, match="no vendor key is pinned.*TRACEMARK_VENDOR_PUB"):
        load_package(package, Passphrase(PASSPHRASE), now=NOW)
    with pytest.warns(UntrustedSignerWarning, match="not pinned"):
        loaded = load_package(package, Passphrase(PASSPHRASE), trust_any_signer=True, now=NOW)
    assert loaded.state_dict is not None and not loaded.signer_pinned

    code, _, err = _cli(monkeypatch, capsys, "inspect", str(package))
    assert code == 2
    _one_error_line(err, "UntrustedSignerError")
    assert "--vendor-pub" in err and "--trust-any-signer" in err
    code, out, err = _cli(monkeypatch, capsys, "inspect", str(package), "--trust-any-signer")
    assert code == 0 and "warning:" in err and "not pinned" in err and "UNPINNED" in out
    plain = tmp_path / "plain.safetensors"
    code, _, err = _cli(monkeypatch, capsys, "unpack", str(package), "--out", str(plain), "--passphrase-env", "PKG_PASS",
                        env={"PKG_PASS": PASSPHRASE})
    assert code == 2 and not plain.exists()
    _one_error_line(err, "UntrustedSignerError")

    # Pinned three ways: the flag, $TRACEMARK_VENDOR_PUB (a file or a directory), the config directory.
    code, out, err = _cli(monkeypatch, capsys, "inspect", str(package), "--vendor-pub", str(vendor_pub))
    assert code == 0 and "pinned key" in out and "warning" not in err
    assert load_package(package, Passphrase(PASSPHRASE), vendor_key=vendor_pub, now=NOW).signer_pinned
    monkeypatch.setenv("TRACEMARK_VENDOR_PUB", str(vendor_pub.parent))
    assert load_package(package, Passphrase(PASSPHRASE), now=NOW).signer_pinned
    monkeypatch.delenv("TRACEMARK_VENDOR_PUB")
    trusted = tmp_path / "xdg-config" / "tracemark" / "trusted-vendors"
    trusted.mkdir(parents=True)
    vendor.public.save(trusted / "acme-vendor.pub")
    assert inspect_package(package).signer_pinned


def _forge(package: Path, out: Path) -> Path:
    """What a customer holding the passphrase can do: unwrap the data key, extend the licence to 2099,
    lift the output policy to full probabilities, re-wrap for the passphrase and re-sign with their own key."""
    head, document = _parts(package)
    original = Manifest.from_dict(document)
    stanza = next(w for w in original.wraps if w["type"] == "passphrase")
    data_key = Passphrase(PASSPHRASE).unwrap(stanza, original.core_digest())
    customer = VendorKey.generate()
    document["licence"]["not_after"] = "2099-01-01T00:00:00Z"
    document["licence"]["output_policy"] = {"mode": "probabilities", "top_k": None, "decimals": None}
    document["vendor"] = {"ed25519": customer.public.to_dict()["ed25519"], "key_id": customer.public.key_id}
    digest = Manifest.from_dict(document).core_digest()
    document["wraps"] = [PassphraseWrap(PASSPHRASE, n=FAST_N).stanza(data_key, digest)]
    return _write_signed(out, head, document, customer)


def test_forged_licence_resigned_by_the_customer_is_refused(
    package: Path, vendor_pub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    forged = _forge(package, tmp_path / "forged.tmpkg")
    later = NOW + timedelta(days=3650)
    with pytest.raises(UntrustedSignerError, match="no vendor key is pinned"):
        load_package(forged, Passphrase(PASSPHRASE), now=later)
    with pytest.raises(UntrustedSignerError, match="not by the pinned key"):
        load_package(forged, Passphrase(PASSPHRASE), vendor_key=vendor_pub, now=later)
    # The forgery is otherwise sound: only the opt-in opens it, and says so.
    with pytest.warns(UntrustedSignerWarning):
        loaded = load_package(forged, Passphrase(PASSPHRASE), trust_any_signer=True, now=later)
    assert loaded.licence.output_policy.mode == "probabilities"

    for pin in ((), ("--vendor-pub", str(vendor_pub))):
        code, _, err = _cli(monkeypatch, capsys, "serve", str(forged), "--passphrase-env", "PKG_PASS", *pin,
                            "--clients-db", str(tmp_path / "c.sqlite"), "--audit-db", str(tmp_path / "a.sqlite"),
                            env={"PKG_PASS": PASSPHRASE})
        assert code == 2
        _one_error_line(err, "UntrustedSignerError")


# -- finding 5: key-wrap bounds ----------------------------------------------------------------------------------


def _passphrase(document: dict) -> dict:
    return next(w for w in document["wraps"] if w["type"] == "passphrase")


def _set(**fields: object) -> Callable[[dict], None]:
    return lambda d: _passphrase(d).update(fields)


HOSTILE: dict[str, tuple[Callable[[dict], None], type[Exception]]] = {
    "scrypt 16 GiB (n=2^22, r=32)": (_set(n=2**22, r=32), KeyWrapBoundsError),
    "scrypt 4 GiB (n=2^20, r=32)": (_set(n=2**20, r=32), KeyWrapBoundsError),
    "scrypt 2 GiB of CPU (p=16)": (_set(n=2**17, r=8, p=16), KeyWrapBoundsError),
    "scrypt r=0": (_set(r=0), KeyWrapBoundsError),
    "scrypt p=0": (_set(p=0), KeyWrapBoundsError),
    "scrypt n not a power of two": (_set(n=3000), KeyWrapBoundsError),
    "scrypt n=2^16 with r=1": (_set(n=2**16, r=1), KeyWrapBoundsError),
    "scrypt n huge int": (_set(n=10**400), KeyWrapBoundsError),
    "scrypt n float": (_set(n=1024.0), KeyWrapBoundsError),
    "scrypt n string": (_set(n="1024"), KeyWrapBoundsError),
    "scrypt n bool": (_set(r=True), KeyWrapBoundsError),
    "scrypt n missing": (lambda d: _passphrase(d).pop("n"), KeyWrapBoundsError),
    "salt not base64": (_set(salt="!!!!"), KeyWrapStanzaError),
    "salt 4 bytes": (_set(salt="AAAAAA=="), KeyWrapStanzaError),
    "salt 1 MB": (_set(salt="A" * (1 << 20)), KeyWrapStanzaError),
    "salt a number": (_set(salt=12), KeyWrapStanzaError),
    "nonce 4 bytes": (_set(nonce="AAAAAA=="), KeyWrapStanzaError),
    "wrapped key short": (_set(wrapped_key="AAAA"), KeyWrapStanzaError),
    "wrapped key missing": (lambda d: _passphrase(d).pop("wrapped_key"), KeyWrapStanzaError),
    "ephemeral 31 bytes": (lambda d: d["wraps"][1].update(ephemeral="A" * 40 + "AA=="), KeyWrapStanzaError),
    "recipient not hex": (lambda d: d["wraps"][1].update(recipient=["x"]), KeyWrapStanzaError),
    "unknown stanza type": (lambda d: d["wraps"].append({"type": "rot13"}), KeyWrapStanzaError),
    "stanza not an object": (lambda d: d["wraps"].append(7), KeyWrapStanzaError),
    "wraps not a list": (lambda d: d.update(wraps={"type": "passphrase"}), KeyWrapStanzaError),
    "no stanzas": (lambda d: d.update(wraps=[]), KeyWrapStanzaError),
    "1000 stanzas": (lambda d: d.update(wraps=d["wraps"] * 500), KeyWrapStanzaError),
    "8 stanzas at the per-stanza maximum": (lambda d: d.update(wraps=[{**_passphrase(d), "n": 2**18, "r": 8}] * 8), KeyWrapBoundsError),
    "tpm2 blob 1 MB": (lambda d: d["wraps"].append({**d["wraps"][0], "type": "tpm2", "device_id": "dev-1", "parent_name": "000b" + "00" * 32,
                                                    "pcrs": "sha256:7", "public": "A" * (1 << 20), "duplicate": "AA==", "seed": "AA=="}),
                       KeyWrapStanzaError),
    "tpm2 pcrs hostile": (lambda d: d["wraps"].append({**d["wraps"][0], "type": "tpm2", "device_id": "dev-1", "parent_name": "000b" + "00" * 32,
                                                       "pcrs": "sha256:" + ",".join(["7"] * 5000), "public": "AA==", "duplicate": "AA==",
                                                       "seed": "AA=="}), KeyWrapStanzaError),
}


def test_hostile_key_wrap_parameters_give_one_line_named_errors(
    package: Path, vendor: VendorKey, vendor_pub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Even signed by the pinned vendor, a stanza outside the bounds is refused before any key work."""
    head, document = _parts(package)
    unlockers = [Passphrase(PASSPHRASE), RecipientKey.from_vendor(vendor)]
    for name, (mutate, error) in HOSTILE.items():
        hostile = json.loads(json.dumps(document))
        mutate(hostile)
        path = _write_signed(tmp_path / "hostile.tmpkg", head, hostile, vendor)
        start = time.perf_counter()
        with pytest.raises(error) as info:
            load_package(path, unlockers, vendor_key=vendor.public, now=NOW)
        assert time.perf_counter() - start < 1.0, name  # refused before any scrypt ran
        assert "\n" not in str(info.value) and len(str(info.value)) < 400, (name, str(info.value))
        with pytest.raises(error):
            inspect_package(path, vendor.public)  # the keyless check sees it too
    _set(n=2**22, r=32)(document)
    path = _write_signed(tmp_path / "hostile.tmpkg", head, document, vendor)
    for verb in (("inspect", str(path)), ("unpack", str(path), "--out", str(tmp_path / "p"), "--passphrase-env", "PKG_PASS")):
        code, _, err = _cli(monkeypatch, capsys, *verb, "--vendor-pub", str(vendor_pub), env={"PKG_PASS": PASSPHRASE})
        assert code == 2
        _one_error_line(err, "KeyWrapBoundsError")
        assert "16384 MiB" in err


# -- finding 7: inspect checks all keyless integrity --------------------------------------------------------------


def test_inspect_exits_2_on_a_corrupted_tag_or_chunk(
    package: Path, vendor: VendorKey, vendor_pub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    raw = package.read_bytes()
    payload_start = 8
    tag_byte = payload_start + 256 + 3  # inside chunk 0's tag
    chunk_byte = payload_start + 1000  # inside chunk 3's ciphertext
    bad_tag, bad_chunk = bytearray(raw), bytearray(raw)
    bad_tag[tag_byte] ^= 0x10
    bad_chunk[chunk_byte] ^= 0x10
    (tmp_path / "tag.tmpkg").write_bytes(bad_tag)
    (tmp_path / "chunk.tmpkg").write_bytes(bad_chunk)
    (tmp_path / "short.tmpkg").write_bytes(raw[:payload_start + 300] + raw[payload_start + 300 + 16:])
    pin = ("--vendor-pub", str(vendor_pub))

    for name in ("tag", "short"):
        code, _, err = _cli(monkeypatch, capsys, "inspect", str(tmp_path / f"{name}.tmpkg"), *pin)
        assert code == 2, name
        _one_error_line(err, "CorruptPackageError")
    code, out, _ = _cli(monkeypatch, capsys, "inspect", str(package), *pin)
    assert code == 0 and "checked:" in out and "not checked: chunk contents" in out
    # Chunk contents need the data key: without one inspect says it did not check them; with one it does.
    code, out, _ = _cli(monkeypatch, capsys, "inspect", str(tmp_path / "chunk.tmpkg"), *pin)
    assert code == 0 and "not checked: chunk contents" in out
    code, _, err = _cli(monkeypatch, capsys, "inspect", str(tmp_path / "chunk.tmpkg"), *pin, "--passphrase-env", "PKG_PASS",
                        env={"PKG_PASS": PASSPHRASE})
    assert code == 2 and "chunk 3 of 5 does not authenticate" in err
    code, out, _ = _cli(monkeypatch, capsys, "inspect", str(package), *pin, "--passphrase-env", "PKG_PASS", "--json")
    assert code == 0 and any("every chunk decrypts" in c for c in json.loads(out)["checked"])


# -- byte-flip fuzz of the real load path ------------------------------------------------------------------------


def mutations(raw: bytes, count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` seeded mutations of ``raw``: single-byte flips and random bytes anywhere, truncations, insertions."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    for i in range(count):
        kind = ("flip", "byte", "truncate", "insert")[i % 4] if i % 5 else "flip"
        data = bytearray(raw)
        pos = rng.randrange(len(raw))
        if kind == "flip":
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == "byte":
            data[pos] = (data[pos] + rng.randrange(1, 256)) % 256
        elif kind == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = bytes([rng.randrange(256)])
        out.append((f"{kind}@{pos}", bytes(data)))
    return out


def test_byte_flip_fuzz_gives_only_named_errors(package: Path, vendor: VendorKey, tmp_path: Path) -> None:
    raw = package.read_bytes()
    unlockers = [Passphrase(PASSPHRASE), RecipientKey.from_vendor(vendor)]
    target = tmp_path / "fuzz.tmpkg"
    seen: dict[str, int] = {}
    for name, data in mutations(raw, 400, seed=15):
        target.write_bytes(data)
        try:
            load_package(target, unlockers, vendor_key=vendor.public, now=NOW, workers=1)
        except TracemarkError as exc:
            seen[type(exc).__name__] = seen.get(type(exc).__name__, 0) + 1
        else:
            pytest.fail(f"mutation {name} was accepted")
    assert sum(seen.values()) == 400
    assert {"CorruptPackageError", "PackageSignatureError"} <= set(seen), seen
