"""The ownership report end to end: CLI -> report.html + signed report.pdf -> report verify, tampering, bad input."""

from __future__ import annotations

import io
import json
import re
from html import unescape
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509

from tests.cli_runs import cli_error, run
from tests.report.conftest import MISSED, PASSPHRASE, Case, Made
from tracemark.keys import WatermarkKey
from tracemark.ledger import OwnerIdentity, export_bundle
from tracemark.report.errors import ReportError, ReportSignatureError
from tracemark.report.ownership import chance_in_words, verify_report
from tracemark.report.signing import load_certificate, owner_certificate


def _check(case: Case, made: Made, pdf: Path | None = None, **kwargs):  # noqa: ANN202
    roots = x509.load_pem_x509_certificates(case.authority.ca_pem.read_bytes())
    options = {"bundle": case.bundle, "cert": load_certificate(made.cert), "trusted_roots": roots, **kwargs}
    return verify_report(pdf or made.pdf, **options)


def test_demo_verdict_renders_into_both_files_in_under_30_seconds(case: Case, made: Made) -> None:
    assert made.seconds < 30, f"report took {made.seconds:.1f} s"
    html = made.html.read_text()
    # self-contained: no script, no stylesheet link, every image inline
    assert "<script" not in html and "<link" not in html and "url(" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 101 and all(s.startswith("data:image/png;base64,") for s in sources)  # figure + 100 triggers
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())
    # in plain words, in this order: claim, timeline, evidence (error rate as a sentence), triggers, robustness, how to check
    order = ["1. What is claimed", "ACME Vision GmbH claims that the model at https://suspect.example/predict is a copy",
             "carries the code of the copy licensed to customer ACME GmbH",
             "2. When each thing happened", "The secret watermark key", "was marked with this key",
             "packaged for customer ACME GmbH", "was first seen", "this is the verdict in this report",
             "3. The evidence", "The chance that a model never trained with our key gives 35 or more of these 100 secret answers "
             "is below one in a billion", "The suspect gave 97 of them",
             "Per-customer code", "CUSTOMER ACME GmbH", "The chance that a copy not made for ACME GmbH matches ACME GmbH's code",
             "4. The trigger images", "5. What survived the robustness lab",
             "The mark survived every one of the 2 attacks", "prune 30%", "6. How to check all of this independently",
             "tracemark report verify report.pdf --bundle evidence.zip"]
    positions = [text.find(phrase) for phrase in order]
    assert -1 not in positions, [p for p, i in zip(order, positions) if i == -1]
    assert positions == sorted(positions)
    assert text.count("Vouched for by an RFC 3161 time-stamp by CN=Test TSA") == 4
    assert html.count('class="trigger miss"') == len(MISSED) and html.count('class="trigger match"') == 100 - len(MISSED)
    assert case.bundle.read_bytes() and __import__("hashlib").sha256(case.bundle.read_bytes()).hexdigest() in html
    assert made.pdf.read_bytes().startswith(b"%PDF-")


def test_report_verify_accepts_the_pdf_through_the_cli(case: Case, made: Made) -> None:
    result = run("report", "verify", str(made.pdf), "--bundle", str(case.bundle), "--cert", str(made.cert),
                 "--tsa-ca", str(case.authority.ca_pem), "--json")
    check = json.loads(result.output)
    assert check["owner_fingerprint"] == case.owner.fingerprint() and check["authority"] == "CN=Test TSA"
    assert check["verdict"] == "copy" and "evidence bundle file" in check["hashes_matched"]
    # the signed PDF carries the values and the HTML under the signature
    from pyhanko.pdf_utils.reader import PdfFileReader

    from tracemark.report.signing import _attachments

    attached = _attachments(PdfFileReader(io.BytesIO(made.pdf.read_bytes())))
    assert attached["report.html"] == made.html.read_bytes()
    assert json.loads(attached["tracemark-report.json"])["verdict"] == case.verdict


def test_pyhanko_validator_accepts_the_signature_against_the_owner_certificate_only(case: Case, made: Made) -> None:
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import serialization
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    def asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))

    tsa_root = asn1(x509.load_pem_x509_certificate(case.authority.ca_pem.read_bytes()))
    signature = PdfFileReader(io.BytesIO(made.pdf.read_bytes())).embedded_signatures[0]
    status = validate_pdf_signature(signature, signer_validation_context=ValidationContext(trust_roots=[asn1(load_certificate(made.cert))]),
                                    ts_validation_context=ValidationContext(trust_roots=[tsa_root]))
    assert status.bottom_line and status.coverage.name == "ENTIRE_FILE" and status.timestamp_validity.trusted
    assert status.signing_cert.subject.human_friendly.endswith(f"tracemark owner {case.owner.fingerprint()[:16]}")
    stranger = owner_certificate(OwnerIdentity.generate())
    untrusted = validate_pdf_signature(signature, signer_validation_context=ValidationContext(trust_roots=[asn1(stranger)]),
                                       ts_validation_context=ValidationContext(trust_roots=[tsa_root]))
    assert untrusted.intact and not untrusted.trusted and not untrusted.bottom_line


def _positions(pdf: bytes) -> dict[str, int]:
    """Byte offsets to flip: page content, the owner's signature value, the time-stamp token's signature, the padding."""
    match = re.search(rb"/Contents <([0-9a-fA-F]+)>", pdf)
    assert match is not None
    start = match.start(1)
    der = bytes.fromhex(match.group(1).decode())
    info = cms.ContentInfo.load(der)
    signer = info["content"]["signer_infos"][0]
    token = signer["unsigned_attrs"][0]["values"][0]
    used = len(info.dump())
    def hex_at(blob: bytes) -> int:
        return start + 2 * der.index(blob) + 2 * (len(blob) // 2)
    return {
        "page content": len(pdf) // 5,
        "end of file": len(pdf) - 3,
        "owner signature": hex_at(signer["signature"].native),
        "time-stamp token": hex_at(token["content"]["signer_infos"][0]["signature"].native),
        "time-stamp time": hex_at(token["content"]["encap_content_info"]["content"].parsed["gen_time"].dump()),
        "signature padding": start + 2 * used + 10,
    }


@pytest.mark.parametrize("where", ["page content", "end of file", "owner signature", "time-stamp token", "time-stamp time", "signature padding"])
def test_any_flipped_byte_is_refused(case: Case, made: Made, tmp_path: Path, where: str) -> None:
    data = made.pdf.read_bytes()
    offset = _positions(data)[where]
    for flip in (0x01, 0x20):  # a hex digit stays a hex digit (0x01 mostly), or the syntax breaks (0x20)
        altered = bytearray(data)
        altered[offset] ^= flip
        path = tmp_path / f"altered-{flip}.pdf"
        path.write_bytes(bytes(altered))
        with pytest.raises(ReportSignatureError) as caught:
            _check(case, made, path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_cli_refuses_an_altered_pdf_with_one_line(case: Case, made: Made, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    altered = bytearray(made.pdf.read_bytes())
    altered[_positions(bytes(altered))["owner signature"]] ^= 0x01
    path = tmp_path / "report.pdf"
    path.write_bytes(bytes(altered))
    line = cli_error(capsys, monkeypatch, "report", "verify", str(path), "--cert", str(made.cert), "--tsa-ca", str(case.authority.ca_pem))
    assert "ReportSignatureError" in line and "altered" in line


def test_junk_is_refused_as_not_a_pdf_even_without_a_pinned_authority(made: Made, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"junk")
    with pytest.raises(ReportSignatureError, match="not a PDF"):
        verify_report(junk, cert=None, owner_key=None)  # no --tsa-ca, no --cert: the file itself is the first thing refused


def test_verify_pins_the_owner_and_the_bundle(case: Case, made: Made, tmp_path: Path) -> None:
    # another owner's certificate, and no pin at all
    with pytest.raises(ReportSignatureError, match="another certificate"):
        _check(case, made, cert=owner_certificate(OwnerIdentity.generate()), bundle=None)
    with pytest.raises(ReportError, match="nothing pins the owner"):
        _check(case, made, cert=None, bundle=None)
    # the bundle alone pins the owner (the key that signed its ledger)
    assert _check(case, made, cert=None).owner_fingerprint == case.owner.fingerprint()
    # a bundle exported from the same ledger at another point is not the one the report prints
    other = tmp_path / "earlier.zip"
    export_bundle(case.directory / "ledger", other, case.owner, [case.key], upto=5)
    with pytest.raises(ReportSignatureError, match="made from another bundle"):
        _check(case, made, bundle=other)


def test_bad_inputs_are_refused_with_one_line(case: Case, made: Made, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TRACEMARK_OWNER_PASSPHRASE", PASSPHRASE)
    base = ["report", "--out", str(tmp_path / "out"), "--owner-key", str(case.owner_key), "--tsa-ca", str(case.authority.ca_pem)]
    other_key = WatermarkKey.generate("abstract", input_shape=(1, 8, 8), num_classes=10, n_triggers=16)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({**case.verdict, "key_commitment": other_key.commitment()}))
    line = cli_error(capsys, monkeypatch, *base, "--verdict", str(foreign), "--bundle", str(case.bundle))
    assert "does not commit" in line
    broken = tmp_path / "broken.json"
    broken.write_text('{"verdict": "copy", ')
    assert "not readable as a verdict" in cli_error(capsys, monkeypatch, *base, "--verdict", str(broken))
    tampered = tmp_path / "evidence.zip"
    data = bytearray(case.bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    assert "does not verify" in cli_error(capsys, monkeypatch, *base, "--verdict", str(case.verdict_file), "--bundle", str(tampered))
    assert not (tmp_path / "out").exists()


def test_chances_are_said_in_words() -> None:
    assert chance_in_words(1e-9) == "below one in a billion"
    assert chance_in_words(4.1e-10) == "below one in a billion"
    assert chance_in_words(3e-96) == "below one in 10^95 (a 1 followed by 95 zeros)"
    assert chance_in_words(0.025) == "about one in 40" and chance_in_words(0.5) == "about 50%"
    assert chance_in_words(0.0).startswith("below one in 10^300")


def test_without_a_bundle_the_key_gives_the_triggers(case: Case, made: Made, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TRACEMARK_OWNER_PASSPHRASE", PASSPHRASE)
    out = tmp_path / "report"
    run("report", "--verdict", str(case.verdict_file), "--key", str(case.key_file), "--out", str(out),
        "--owner-key", str(case.owner_key), "--tsa-url", case.tsa_url)
    html = (out / "report.html").read_text()
    assert "No ledger timeline" in html and "given with --key" in html
    assert html.count('class="trigger match"') == 100 - len(MISSED)
    assert _check(case, made, out / "report.pdf", bundle=None).hashes_matched == []
    with pytest.raises(ReportSignatureError, match="made without an evidence bundle"):
        _check(case, made, out / "report.pdf")


def _combined_doc(case: Case, lineage_p: float) -> dict:
    """A combined verdict as `verify --key --lineage --json` prints it: the real trigger test and a lineage result."""
    from tests.report.conftest import copy_target
    from tracemark.evidence import Commitment, EvidenceResult, TriggerEvidence, combine

    trigger = TriggerEvidence(case.key).test(copy_target(case.key), alpha=1e-9)
    lineage = EvidenceResult(kind="lineage", decision="copy" if lineage_p <= 1e-9 else "no-evidence", p_value=lineage_p,
                             alpha=1e-9, null_kind="calibrated", null="binomial tail at the worst reference's bound 0.3",
                             queries=200, target=trigger.target, commitment=Commitment("ab" * 32),
                             summary="150 of 200 fingerprint inputs answered with the expected label")
    return json.loads(json.dumps(combine([trigger, lineage], 1e-9).to_dict()))


def test_a_combined_verdict_reports_every_kind_of_evidence(case: Case) -> None:
    from tracemark.report.ownership import build_report, render_html

    report = build_report(_combined_doc(case, 1e-15), key=case.key)
    assert [e["kind"] for e in report.evidence] == ["combined", "trigger", "lineage"]
    assert report.verdict_label == "copy" and report.evidence[0]["result"].startswith("COPY: 2 of 2 kinds of evidence")
    assert "trigger, lineage evidence shows it" in report.claim
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", render_html(report))).split())
    for phrase in ("All the evidence together", "Holm", "Behaviour inherited from our model (lineage fingerprint)",
                   "150 of 200 fingerprint inputs", "The suspect gave 97 of them"):
        assert phrase in text, phrase
    weak = build_report(_combined_doc(case, 0.5), key=case.key)  # the lineage does not count; the trigger still does
    assert weak.evidence[0]["result"].startswith("COPY: 1 of 2") and "does not count towards" in weak.evidence[2]["rule"]


def test_a_combined_verdict_without_the_key_is_refused(case: Case) -> None:
    from tracemark.report.ownership import build_report

    doc = _combined_doc(case, 1e-15)
    doc["components"] = [c for c in doc["components"] if c["kind"] != "trigger"]
    with pytest.raises(ReportError, match="no trigger component"):
        build_report(doc, key=case.key)
    doc["components"] = [{"kind": "lineage"}]
    with pytest.raises(ReportError, match="lacks kind"):
        build_report(doc, key=case.key)
