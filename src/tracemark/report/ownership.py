"""The ownership report: what a lawyer reads, built from what ``verify``, ``trace``, ``robustness`` and the evidence bundle produced.

:func:`build_report` reads those values (it defines none of its own beyond :class:`Report`), :func:`write_report`
renders ``report.html`` and a signed, time-stamped ``report.pdf``, and :func:`verify_report` checks such a PDF:
the owner's signature, its time-stamp, and that the hashes it prints are the bundle's.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark._util.files import atomic_write_bytes, atomic_write_text
from tracemark.errors import TracemarkError
from tracemark.keys import WatermarkKey, decode_key_file
from tracemark.ledger.bundle import LEDGER, MANIFEST, BundleReport, read_members, verify_members
from tracemark.ledger.chain import parse_entries
from tracemark.ledger.entries import Entry
from tracemark.ledger.events import KEY_CREATED, MODEL_EMBEDDED, MODEL_PACKAGED, VERIFICATION
from tracemark.ledger.identity import OwnerIdentity, fingerprint
from tracemark.ledger.timestamp import TIMESTAMPED, decode_record
from tracemark.report.errors import ReportError, ReportSignatureError
from tracemark.report.signing import SignedPdf, check_signed_pdf, read_pdf, sign_pdf
from tracemark.trust.authorities import authority_warnings
from tracemark.verification.stats import binomial_pvalue

REPORT_JSON = "tracemark-report.json"
REPORT_HTML = "report.html"
FORMAT = "tracemark-ownership-report"
VERSION = 1
MAX_JSON_BYTES = 64 << 20
TRACE_EVENT = "trace"  # tracemark.fingerprint.trace.TRACE_EVENT (importing it would load torch)
_LABELS = ("copy", "no-evidence", "inconclusive")
_NAMES = {2: "a hundred", 3: "a thousand", 6: "a million", 9: "a billion", 12: "a trillion"}
HASH_LABELS = {
    "bundle_sha256": "evidence bundle file (SHA-256)",
    "manifest_sha256": "bundle manifest MANIFEST.json (SHA-256)",
    "ledger_head": "ledger head (last entry and its hash)",
    "owner_fingerprint": "owner key fingerprint (SHA-256 of the Ed25519 public key)",
    "owner_certificate_sha256": "owner certificate that signs the PDF (SHA-256)",
    "key_commitment": "watermark key commitment",
    "trigger_sha256": "trigger set committed in the ledger (SHA-256)",
    "verdict_sha256": "verdict (SHA-256 of its canonical JSON)",
    "trace_sha256": "trace result (SHA-256 of its canonical JSON)",
    "robustness_sha256": "robustness result file (SHA-256)",
}
BUNDLE_HASHES = ("bundle_sha256", "manifest_sha256", "ledger_head", "owner_fingerprint")


# ---------------------------------------------------------------------- words
def chance_in_words(p: float) -> str:
    """A probability as a lawyer reads it: "about 12%", "about one in 40", "below one in a billion"."""
    if not p > 0:
        return "below one in 10^300 (smaller than the computer can represent)"
    if p >= 0.1:
        return f"about {p:.0%}"
    if p >= 0.01:
        return f"about one in {round(1 / p)}"
    n = math.floor(-math.log10(p) + 1e-9)
    return f"below one in {_NAMES.get(n, f'10^{n} (a 1 followed by {n} zeros)')}"


def _date(iso: str | None) -> str:
    """``2026-12-02T01:12:05Z`` as ``2 December 2026, 01:12:05 UTC``."""
    if not iso:
        return "no date"
    try:
        when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(dt.timezone.utc)
    except ValueError:
        return iso
    return f"{when.day} {when:%B %Y, %H:%M:%S} UTC"


# ---------------------------------------------------------------------- inputs
def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """The JSON document at ``path``; raises :class:`ReportError` naming ``what`` if it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no {what} at {path}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ReportError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; not a {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable as a {what} (JSON: {exc})") from exc


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_verdict(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` if it is what ``tracemark verify --json`` prints; else :class:`ReportError` naming the first bad field."""
    if not isinstance(doc, dict):
        raise ReportError(f"{where}: not a verdict (expected the JSON object `tracemark verify --json` prints)")
    checks = {
        "verdict": lambda v: v in _LABELS, "p_value": _number, "alpha": _number, "target": lambda v: isinstance(v, str),
        "matches": lambda v: isinstance(v, int), "answered": lambda v: isinstance(v, int), "queries": lambda v: isinstance(v, int),
        "null": lambda v: isinstance(v, dict) and _number(v.get("rate")) and isinstance(v.get("source"), str),
        "threshold": lambda v: v is None or isinstance(v, int),
        "key_commitment": lambda v: isinstance(v, str) and len(v) == 64 and not v.strip("0123456789abcdef"),
        "answers": lambda v: isinstance(v, list) and all(isinstance(a, int) for a in v),
    }
    for name, ok in checks.items():
        if name not in doc:
            raise ReportError(f"{where}: not a verdict: no field {name!r} (expected the JSON `tracemark verify --json` prints)")
        if not ok(doc[name]):
            raise ReportError(f"{where}: not a verdict: field {name!r} has an unexpected value {str(doc[name])[:60]!r}")
    if not 0 <= doc["matches"] <= doc["answered"] <= doc["queries"]:
        raise ReportError(f"{where}: the verdict's counts are inconsistent (matches {doc['matches']}, answered {doc['answered']}, "
                          f"queries {doc['queries']})")
    return doc


def split_combined(doc: Any, where: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(trigger verdict, combined verdict)`` of what ``verify --json`` printed: a key-only verdict as it is (no
    combined one), or a combined verdict (``verify --lineage/--base/--responses-db``) whose trigger component holds
    the key's verdict. Raises :class:`ReportError` naming the first problem."""
    if not (isinstance(doc, dict) and "components" in doc):
        return check_verdict(doc, where), None
    components = doc["components"]
    if not (isinstance(components, list) and components and all(isinstance(c, dict) for c in components)
            and doc.get("verdict") in _LABELS and _number(doc.get("p_value")) and _number(doc.get("alpha"))):
        raise ReportError(f"{where}: not a combined verdict (expected the JSON `tracemark verify --json` prints)")
    for c in components:
        if not (isinstance(c.get("kind"), str) and c.get("decision") in _LABELS and _number(c.get("p_value"))
                and _number(c.get("p_adjusted")) and isinstance(c.get("rejected"), bool) and isinstance(c.get("summary"), str)):
            raise ReportError(f"{where}: a component of the combined verdict lacks kind, decision, p_value, p_adjusted, "
                              "rejected or summary")
    trigger = next((c for c in components if c["kind"] == "trigger"), None)
    if trigger is None:
        raise ReportError(f"{where}: the combined verdict has no trigger component; the report is about a watermark key, "
                          "so run `tracemark verify` with --key as well")
    return check_verdict(trigger.get("details"), f"{where} (its trigger component)"), doc


def _combined_evidence(doc: dict[str, Any]) -> dict[str, Any]:
    """The family-wise summary that opens the evidence of a combined verdict."""
    components = doc["components"]
    showing = [c["kind"] for c in components if c["rejected"]]
    word = {"copy": "COPY", "no-evidence": "NO EVIDENCE", "inconclusive": "INCONCLUSIVE"}[doc["verdict"]]
    result = (f"{word}: {len(showing)} of {len(components)} kinds of evidence show the suspect derives from our model "
              f"({', '.join(showing)})" if showing else f"{word}: none of the {len(components)} kinds of evidence shows it")
    return {"kind": "combined", "title": "All the evidence together", "decision": doc["verdict"], "result": result,
            "rule": (f"Each kind of evidence was tested on its own, and the results were combined so that the chance of wrongly "
                     f"calling any one of them is at most {doc['alpha']:.0e} in all (Holm's step-down method)."),
            "observed": f"Smallest adjusted chance: {chance_in_words(doc['p_value'])} (p = {doc['p_value']:.3g}).",
            "details": [f"{c['kind']}: {c['decision']} on its own, adjusted p {c['p_adjusted']:.3g}" +
                        (" (counts)" if c["rejected"] else "") for c in components]}


_TITLES = {"lineage": "Behaviour inherited from our model (lineage fingerprint)", "weights": "Customer code in the weights",
           "customer-code": "Customer code in the answers", "responses": "Marked answers our server gave"}


def _component_evidence(c: dict[str, Any]) -> dict[str, Any]:
    """One non-trigger component of a combined verdict, in the same shape as the trigger's."""
    commitment = c.get("commitment") or {}
    when = commitment.get("committed_at")
    details = [f"Null model ({c.get('null_kind', 'stated')}): {c.get('null', '')}.", f"{c.get('queries', 0)} queries were asked."]
    if commitment.get("digest"):
        details.append(f"Committed as {str(commitment['digest'])[:16]}…" +
                       (f" on {_date(when)} ({commitment.get('vouched_by')})" if when else ", with no vouched-for date") + ".")
    return {"kind": c["kind"], "title": _TITLES.get(c["kind"], c["kind"]), "decision": c["decision"],
            "result": f"{c['decision'].upper()}: {c['summary']}",
            "rule": f"After combining: adjusted p {c['p_adjusted']:.3g}, so it " + ("counts towards" if c["rejected"] else "does not count towards")
                    + " the verdict.",
            "observed": f"The chance of this for a model independent of ours is {chance_in_words(c['p_value'])} (p = {c['p_value']:.3g}).",
            "details": details}


def _check_trace(doc: Any, where: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The trace result and the clone check (``tracemark trace --json``, with or without ``--responses-db``)."""
    if isinstance(doc, dict) and isinstance(doc.get("trace"), dict):
        doc, clones = doc["trace"], doc.get("clone_check")
    else:
        clones = None
    needed = ("verdict", "accused", "best", "n_customers", "alpha", "informative", "target", "key_commitment")
    if not isinstance(doc, dict) or any(k not in doc for k in needed) or doc["verdict"] not in ("customer", "no-match", "inconclusive"):
        raise ReportError(f"{where}: not a trace result (expected the JSON `tracemark trace --json` prints)")
    return doc, clones if isinstance(clones, dict) else None


@dataclass
class _Bundle:
    path: str
    members: dict[str, bytes]
    summary: BundleReport
    entries: list[Entry]
    file_sha256: str | None

    def hashes(self) -> dict[str, str]:
        head = self.entries[-1]
        out = {"manifest_sha256": sha256_hex(self.members[MANIFEST]), "ledger_head": f"entry {head.seq} {head.hash}",
               "owner_fingerprint": self.summary.owner_fingerprint}
        if self.file_sha256 is not None:
            out["bundle_sha256"] = self.file_sha256
        return out

    def token_for(self, seq: int) -> dict[str, Any] | None:
        return next((t for t in self.summary.tokens if t["first_seq"] <= seq <= t["last_seq"]), None)

    def tsa_url(self) -> str | None:
        """The authority the ledger's latest time-stamp came from."""
        records = [e for e in self.entries if e.event == TIMESTAMPED]
        if not records:
            return None
        name = str(records[-1].payload["record"])
        return decode_record(self.members[name], name).tsa_url


def open_bundle(path: str | os.PathLike[str], trusted_roots: list[x509.Certificate] | None = None,
                trust_any_authority: bool = False, expected_key: Ed25519PublicKey | None = None) -> _Bundle:
    """Read and verify an evidence bundle; :class:`ReportError` (one line) if it does not verify."""
    try:
        members = read_members(path)
        summary = verify_members(members, str(path), expected_key, trusted_roots, trust_any_authority=trust_any_authority)
    except ReportError:
        raise
    except TracemarkError as exc:
        raise ReportError(f"the evidence bundle {path} does not verify ({type(exc).__name__}: {exc})") from exc
    entries, _ = parse_entries(members[LEDGER], LEDGER)
    file_sha = sha256_hex(Path(path).read_bytes()) if Path(path).is_file() else None
    return _Bundle(str(path), members, summary, entries, file_sha)


# ---------------------------------------------------------------------- the report value
@dataclass
class Report:
    """What the ownership report says, in its order: claim, timeline, evidence, triggers, robustness, how to check.

    ``timeline`` items: ``event``, ``date`` (words), ``time`` (ISO), ``vouched_by``, ``entry``, ``independent``
    (a time-stamp authority, not only the owner, vouches for the date). ``evidence`` items: ``kind``, ``title``,
    ``result``, ``decision``, ``rule`` (the error rate as a sentence), ``observed``, ``details``. ``triggers``:
    ``index``, ``label`` (the secret answer), ``answer`` (the suspect's), ``match``. ``hashes`` are what
    :func:`verify_report` compares with the bundle. ``trigger_inputs`` (the images) is not part of :meth:`to_dict`.
    """

    title: str
    owner: str
    created: str
    verdict_label: str
    claim: str
    timeline: list[dict[str, Any]]
    evidence: list[dict[str, Any]]
    triggers: list[dict[str, Any]]
    robustness: dict[str, Any] | None
    hashes: dict[str, str]
    checks: list[dict[str, str]]
    notes: list[str]
    verdict: dict[str, Any]
    sources: dict[str, str]
    tsa_url: str = ""
    files: dict[str, str] = field(default_factory=dict)
    combined: dict[str, Any] | None = None
    trigger_inputs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the trigger images left out)."""
        data = {k: v for k, v in self.__dict__.items() if k != "trigger_inputs"}
        return {"format": FORMAT, "version": VERSION, **data}

    def __str__(self) -> str:
        lines = [f"{self.title}", f"  {self.claim}"]
        lines += [f"  {t['date']}: {t['event']} ({t['vouched_by']})" for t in self.timeline]
        lines += [f"  {e['title']}: {e['result']}" for e in self.evidence]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  {name} -> {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def _vouch(bundle: _Bundle, entry: Entry) -> dict[str, Any]:
    token = bundle.token_for(entry.seq)
    own = f"the owner's signature on ledger entry {entry.seq} (dated by the owner's clock, {_date(entry.time)})"
    if token is None:
        return {"date": _date(entry.time), "time": entry.time, "vouched_by": own + "; not yet time-stamped",
                "entry": entry.seq, "independent": False}
    return {"date": _date(token["gen_time"]), "time": token["gen_time"], "entry": entry.seq, "independent": True,
            "vouched_by": f"an RFC 3161 time-stamp by {token['authority']} (entries {token['first_seq']}–{token['last_seq']}: "
                          f"the entry existed by then), and {own}"}


def _timeline(bundle: _Bundle, verdict: dict[str, Any], verdict_sha: str, trace: dict[str, Any] | None,
              trace_sha: str | None) -> tuple[list[dict[str, Any]], bool]:
    commitment = verdict["key_commitment"]
    embedded = {str(e.payload.get("model_sha256")) for e in bundle.entries
                if e.event == MODEL_EMBEDDED and e.payload.get("key_commitment") == commitment}
    targets = {verdict["target"]} | ({str(trace["target"])} if trace is not None else set())
    out, recorded, first_seen = [], False, False
    for e in bundle.entries:
        p = e.payload
        if e.event == KEY_CREATED and p.get("key_commitment") == commitment:
            what = (f"The secret watermark key {commitment[:16]}… was committed: its {p.get('n_triggers')} trigger images and "
                    f"secret answers were fixed (trigger set hash {str(p.get('trigger_sha256'))[:16]}…)")
        elif e.event == MODEL_EMBEDDED and p.get("key_commitment") == commitment:
            what = f"Our model {p.get('model_name') or ''} (file hash {str(p.get('model_sha256'))[:16]}…) was marked with this key".replace("  ", " ")
        elif e.event == MODEL_PACKAGED and (p.get("key_commitment") == commitment or str(p.get("model_sha256")) in embedded):
            what = f"A protected copy was packaged for customer {p.get('customer')} (package hash {str(p.get('package_sha256'))[:16]}…)"
        elif e.event in (VERIFICATION, TRACE_EVENT) and p.get("target") in targets:
            ours = p.get("verdict_sha256") == verdict_sha or (trace_sha is not None and p.get("result_sha256") == trace_sha)
            if not (ours or not first_seen):
                continue
            parts = [] if first_seen else [f"The suspect {p.get('target')} was first seen (checked)"]
            if p.get("verdict_sha256") == verdict_sha:
                parts.append(f"verified: verdict {str(p.get('verdict')).upper()} — this is the verdict in this report")
                recorded = True
            elif ours:
                parts.append(f"traced: {str(p.get('verdict'))} {p.get('customer') or ''} — this is the trace in this report".rstrip())
            first_seen = True
            what = "; ".join(parts)
        else:
            continue
        out.append({"event": what, **_vouch(bundle, e)})
    return out, recorded


def _trigger_evidence(v: dict[str, Any]) -> dict[str, Any]:
    answered, rate, threshold = v["answered"], float(v["null"]["rate"]), v["threshold"]
    source = v["null"]["source"]
    never = "a model never trained with our key"
    if threshold is not None and answered:
        rule = (f"The chance that {never} gives {threshold} or more of these {answered} secret answers is "
                f"{chance_in_words(binomial_pvalue(threshold, answered, rate))}; so {threshold} or more is called a copy "
                f"(error rate set at {v['alpha']:.0e}).")
    else:
        rule = f"Too few answers ({answered}) to reach the error rate {v['alpha']:.0e}: no number of matches would prove a copy."
    observed = (f"The suspect gave {v['matches']} of them; the chance of doing that well without our key is "
                f"{chance_in_words(v['p_value'])} (p = {v['p_value']:.3g}).")
    null = {"keyed": f"exact: each secret answer was drawn at random, so {never} gives it with probability {rate:.4g}",
            "empirical": f"measured on independently trained models: at most {rate:.4g} per answer",
            "control": f"measured on the suspect's own answers to unmarked images: at most {rate:.4g} per answer",
            }.get(source, f"{source}: {rate:.4g} per answer")
    result = {"copy": f"COPY: the suspect gives our secret answers ({v['matches']} of {answered})",
              "no-evidence": f"NO EVIDENCE: the suspect gives {v['matches']} of {answered} secret answers, as chance would",
              "inconclusive": f"INCONCLUSIVE: too few answers ({answered} of {v['queries']} asked) to decide"}[v["verdict"]]
    return {"kind": "trigger", "title": "Secret trigger images (watermark)", "decision": v["verdict"], "result": result,
            "rule": rule, "observed": observed,
            "details": [f"Null model: {null}.", f"{v['queries']} trigger images were asked, {answered} answered.",
                        f"Suspect: {v['target']}."]}


def _trace_evidence(t: dict[str, Any], clones: dict[str, Any] | None) -> list[dict[str, Any]]:
    best = t.get("best") or {}
    out = []
    if t["verdict"] == "customer" and best:
        customer = best.get("customer")
        result = f"CUSTOMER {customer}: the suspect carries the code of the copy made for {customer}"
        rule = (f"The chance that a copy not made for {customer} matches {customer}'s code on {best.get('matches')} or more of these "
                f"{best.get('informative')} answers, allowing for all {t['n_customers']} customers, is "
                f"{chance_in_words(float(best.get('p_adjusted', 1.0)))}.")
    else:
        result = {"no-match": "NO CUSTOMER MATCHES", "inconclusive": "INCONCLUSIVE", "customer": "CUSTOMER"}[t["verdict"]]
        rule = f"A customer is named only when the chance of an innocent match, over all {t['n_customers']} customers, is at most {t['alpha']:.0e}."
    details = [f"Accused: {', '.join(t['accused']) or 'nobody'}."]
    weights = t.get("weights")
    if isinstance(weights, dict):
        details.append(f"Weight test: {', '.join(weights.get('accused') or []) or 'no customer named'}.")
    out.append({"kind": "trace", "title": "Per-customer code (which customer's copy)", "decision": t["verdict"], "result": result,
                "rule": rule, "observed": f"{t['informative']} answers were informative (another class than the image's own).",
                "details": details})
    if clones is not None:
        named = clones.get("named") or {}
        if named:
            result = f"CLONE OF CLIENT {named.get('client_name') or named.get('client_id')}"
            rule = (f"The chance that a model not trained on this client's marked answers agrees this well is "
                    f"{chance_in_words(float(named.get('p_adjusted', 1.0)))}, allowing for every client.")
        else:
            result, rule = str(clones.get("outcome")).upper(), f"A client is named only at an error rate of at most {clones.get('alpha')}."
        out.append({"kind": "responses", "title": "Marked API answers (which client it learned from)", "decision": str(clones.get("outcome")),
                    "result": result, "rule": rule, "observed": "", "details": []})
    return out


def _robustness(path: Path) -> dict[str, Any]:
    from tracemark.lab.results import SuiteResult

    try:
        result = SuiteResult.load_json(path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path}: not a robustness result.json ({type(exc).__name__}: {exc})") from exc
    rows = [{"kind": s.kind, "attack": s.strongest, "thief_accuracy": f"{100 * s.thief_accuracy:.1f}%",
             "change": f"{s.change_points:+.1f} points", "verdict": s.verdict, "p_value": f"{s.p_value:.2g}",
             "survived": not s.removed_by, "removed_by": ", ".join(s.removed_by)} for s in result.summary()]
    if result.survived:
        sentence = (f"The mark survived every one of the {len(result.records)} attacks a thief could make on {result.dataset} "
                    f"while keeping the model useful (within {result.budget_points:g} accuracy points of ours).")
    else:
        sentence = (f"{len(result.removed_by)} of {len(result.records)} attacks removed the mark while keeping the model within "
                    f"{result.budget_points:g} accuracy points: " + ", ".join(r.attack for r in result.removed_by) + ".")
    return {"survived": result.survived, "sentence": sentence, "rows": rows, "suite": result.suite, "dataset": result.dataset}


def build_report(
    verdict: dict[str, Any],
    *,
    bundle: str | os.PathLike[str] | None = None,
    trace: Any = None,
    robustness: str | os.PathLike[str] | None = None,
    key: WatermarkKey | None = None,
    owner_name: str = "",
    trusted_roots: list[x509.Certificate] | None = None,
    trust_any_authority: bool = False,
    sources: dict[str, str] | None = None,
) -> Report:
    """The :class:`Report` of a verdict (as ``tracemark verify --json`` prints it: the key's alone, or a combined verdict with a
    trigger component), with what the bundle, trace and robustness run add.

    The trigger images come from ``key`` or, failing that, from the key the bundle reveals. Raises
    :class:`ReportError` when the verdict is for another key than ``key`` or than the bundle commits, or the bundle does not verify.
    """
    printed = verdict
    verdict, combined = split_combined(verdict, (sources or {}).get("verdict", "the verdict"))
    commitment = verdict["key_commitment"]
    notes: list[str] = []
    if key is not None and key.commitment() != commitment:
        raise ReportError(f"the verdict is for key {commitment[:16]}…, not for the key given ({key.commitment()[:16]}…)")
    trace_doc, clones = _check_trace(trace, (sources or {}).get("trace", "the trace")) if trace is not None else (None, None)
    verdict_sha = sha256_hex(canonical_json(printed))  # what `verify --ledger` recorded
    trace_sha = sha256_hex(canonical_json(trace)) if trace is not None else None
    hashes: dict[str, str] = {"key_commitment": commitment, "verdict_sha256": verdict_sha}
    if trace_sha is not None:
        hashes["trace_sha256"] = trace_sha
    opened = open_bundle(bundle, trusted_roots, trust_any_authority) if bundle is not None else None
    timeline: list[dict[str, Any]] = []
    tsa_url = ""
    if opened is not None:
        created = [e for e in opened.entries if e.event == KEY_CREATED and e.payload.get("key_commitment") == commitment]
        if not created:
            raise ReportError(f"the verdict is for key {commitment[:16]}…, which the bundle's ledger does not commit "
                              "(a verdict for another key than the bundle's)")
        hashes["trigger_sha256"] = str(created[0].payload.get("trigger_sha256"))
        hashes.update(opened.hashes())
        timeline, recorded = _timeline(opened, verdict, verdict_sha, trace_doc, trace_sha)
        if not recorded:
            notes.append("This verdict is not recorded in the bundle's ledger: its date rests only on the signed PDF's time-stamp.")
        notes += [f"Bundle warning: {w}" for w in opened.summary.warnings]
        tsa_url = opened.tsa_url() or ""
        if key is None:
            member = f"keys/{commitment}.json"
            if member in opened.members:
                key = decode_key_file(opened.members[member], None, member)
                notes.append("The trigger images are those of the key the bundle reveals (re-derived and checked against its commitment).")
    else:
        notes.append("No evidence bundle was given: there is no ledger timeline, and no dates beyond the signed PDF's time-stamp.")
    triggers: list[dict[str, Any]] = []
    inputs = None
    if key is not None:
        trigger_set = key.triggers()
        labels = [int(x) for x in trigger_set.labels[: len(verdict["answers"])]]
        triggers = [{"index": i, "label": label, "answer": int(a), "match": int(a) == label}
                    for i, (label, a) in enumerate(zip(labels, verdict["answers"]))]
        inputs = trigger_set.inputs[: len(triggers)]
        if opened is None:
            notes.append("The trigger images are those of the key given with --key.")
    else:
        notes.append("Trigger images not shown: the bundle does not reveal the key; give the key file (--key) to show them.")
    robust = None
    if robustness is not None:
        robust = _robustness(Path(robustness))
        hashes["robustness_sha256"] = sha256_hex(Path(robustness).read_bytes())
    owner = owner_name or (f"The owner of ledger key {opened.summary.owner_fingerprint[:16]}…" if opened is not None else "The owner")
    evidence = [_trigger_evidence(verdict)] + (_trace_evidence(trace_doc, clones) if trace_doc is not None else [])
    if combined is not None:
        others = [_component_evidence(c) for c in combined["components"] if c["kind"] != "trigger"]
        evidence = [_combined_evidence(combined), evidence[0], *others, *evidence[1:]]
    target = verdict["target"]
    committed = next((t for t in timeline if t["event"].startswith("The secret watermark key")), None)
    since = f" (the key {owner} committed to by {committed['date']})" if committed else ""
    claim = {
        "copy": f"{owner} claims that the model at {target} is a copy of its model: it gives the secret answers of "
                f"watermark key {commitment[:16]}…, which no model trained without that key would give{since}.",
        "no-evidence": f"{owner} checked the model at {target} for watermark key {commitment[:16]}…{since}, and finds no evidence that it is a copy.",
        "inconclusive": f"{owner} checked the model at {target} for watermark key {commitment[:16]}…{since}; too few answers were given to decide.",
    }[verdict["verdict"]]
    if combined is not None:
        showing = [c["kind"] for c in combined["components"] if c["rejected"]]
        claim = {
            "copy": f"{owner} claims that the model at {target} is a copy of its model, or was made from it: "
                    f"{', '.join(showing)} evidence shows it, and all the evidence together would wrongly accuse a model "
                    f"independent of ours with a chance {chance_in_words(combined['p_value'])}{since}.",
            "no-evidence": f"{owner} checked the model at {target} with {len(combined['components'])} kinds of evidence "
                           f"(watermark key {commitment[:16]}…{since}), and finds no evidence that it is a copy.",
            "inconclusive": f"{owner} checked the model at {target} with {len(combined['components'])} kinds of evidence "
                            f"(watermark key {commitment[:16]}…{since}); they could not decide.",
        }[combined["verdict"]]
    if trace_doc is not None and trace_doc["verdict"] == "customer":
        claim += f" The copy carries the code of the copy licensed to customer {trace_doc['accused'][0]}."
    checks = _checks(bundle is not None)
    return Report(
        title="Ownership report", owner=owner, created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        verdict_label=combined["verdict"] if combined is not None else verdict["verdict"], claim=claim, timeline=timeline, evidence=evidence, triggers=triggers, robustness=robust,
        hashes=hashes, checks=checks, notes=notes, verdict=verdict, sources=dict(sources or {}), tsa_url=tsa_url, trigger_inputs=inputs,
        combined=combined,
    )


def _checks(with_bundle: bool) -> list[dict[str, str]]:
    out = [{"what": "Check this report's signature, its time-stamp, and that the hashes below are the bundle's (the one command)",
            "command": "tracemark report verify report.pdf " + ("--bundle evidence.zip " if with_bundle else "")
                       + "--cert owner.cert.pem --tsa-ca tsa-root.pem"}]
    if with_bundle:
        out += [{"what": "Check the bundle's file hash against the one printed below", "command": "sha256sum evidence.zip"},
                {"what": "Check the ledger, its signatures and time-stamps, and the revealed key, offline",
                 "command": "tracemark evidence verify evidence.zip --owner-pub owner.pub.pem --tsa-ca tsa-root.pem"}]
    out.append({"what": "Ask the suspect the trigger images again (the key is revealed in the bundle)",
                "command": "tracemark verify --key keys/<commitment>.json --url <suspect URL>   (or --model <suspect file>)"})
    return out


# ---------------------------------------------------------------------- rendering and signing
def render_html(report: Report) -> str:
    """The self-contained HTML of ``report``: images inlined as ``data:`` URIs, no network, no external CSS or JS."""
    import base64

    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from tracemark.report.ownership_plots import null_distribution_png, thumbnail_png

    def uri(png: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

    v = report.verdict
    figure = uri(null_distribution_png(v["matches"], v["answered"], float(v["null"]["rate"]), v["threshold"])) if v["answered"] else None
    thumbs = [uri(thumbnail_png(image)) for image in report.trigger_inputs] if report.trigger_inputs is not None else []
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("ownership.html.j2").render(r=report, figure=figure, thumbs=thumbs, hash_labels=HASH_LABELS)


def write_report(report: Report, out_dir: str | os.PathLike[str], owner: OwnerIdentity, cert: x509.Certificate,
                 tsa_url: str | None = None, timeout: float = 10.0) -> Report:
    """Write ``out_dir/report.html`` and ``out_dir/report.pdf`` (signed by ``owner`` under ``cert``, time-stamped by the
    authority at ``tsa_url``, default the one the bundle's ledger uses); returns ``report`` with ``files`` set.

    The PDF embeds the report's values (``tracemark-report.json``) and the HTML, both covered by the signature.
    """
    from tracemark.report.pdf import render_pdf

    url = tsa_url or report.tsa_url
    if not url:
        raise ReportError("no time-stamp authority: give --tsa-url (or $TRACEMARK_TSA_URL), or a bundle whose ledger is time-stamped")
    if report.hashes.get("owner_fingerprint", fingerprint(owner.public_key)) != fingerprint(owner.public_key):
        raise ReportError("the owner key given is not the key that signed the bundle's ledger")
    report.tsa_url = url
    report.hashes["owner_fingerprint"] = fingerprint(owner.public_key)
    report.hashes["owner_certificate_sha256"] = cert.fingerprint(hashes.SHA256()).hex()
    out = Path(out_dir)
    html = render_html(report)
    document = canonical_json(report.to_dict())
    signed = sign_pdf(render_pdf(report), owner, cert, url, {REPORT_JSON: (document, "application/json"),
                                                             REPORT_HTML: (html.encode("utf-8"), "text/html")}, timeout=timeout)
    report.files = {"html": str(atomic_write_text(out / REPORT_HTML, html)), "pdf": str(atomic_write_bytes(out / "report.pdf", signed, mode=0o644))}
    return report


# ---------------------------------------------------------------------- verification
@dataclass
class ReportCheck:
    """What :func:`verify_report` established about a signed report (it raises on any failure)."""

    pdf: str
    owner_fingerprint: str
    certificate_sha256: str
    signed_at: str
    authority: str
    verdict: str
    claim: str
    bundle: str | None
    hashes_matched: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)

    def __str__(self) -> str:
        lines = [f"report {self.pdf}: signature and time-stamp OK",
                 f"  signed by owner {self.owner_fingerprint[:16]}… (certificate sha256 {self.certificate_sha256[:16]}…)",
                 f"  time-stamped {_date(self.signed_at)} by {self.authority}",
                 f"  verdict {self.verdict.upper()}: {self.claim}"]
        if self.bundle is not None:
            lines.append(f"  matches the evidence bundle {self.bundle}: " + ", ".join(self.hashes_matched))
        lines += [f"  WARNING {w}" for w in self.warnings]
        return "\n".join(lines)


def verify_report(
    pdf: str | os.PathLike[str],
    *,
    bundle: str | os.PathLike[str] | None = None,
    cert: x509.Certificate | None = None,
    owner_key: Ed25519PublicKey | None = None,
    trusted_roots: list[x509.Certificate] | None = None,
    trust_any_authority: bool = False,
) -> ReportCheck:
    """Check a signed report: the owner's signature (pinned by ``cert``, else ``owner_key``, else the key that signed the
    bundle's ledger; never the certificate the PDF carries), the time-stamp (``trusted_roots``), the whole file being
    signed, and that the hashes the report prints are those of ``bundle``. Raises :class:`ReportSignatureError` (one line)."""
    where = str(pdf)
    data = read_pdf(pdf)
    if not data.startswith(b"%PDF-"):  # junk gets its own line, before any question of which authority to trust
        raise ReportSignatureError(f"{where}: not a PDF (it does not start with %PDF-); not a tracemark report")
    warnings = authority_warnings(1, trusted_roots, trust_any_authority)
    opened = None
    pinned: x509.Certificate | Ed25519PublicKey | None = cert or owner_key
    if bundle is not None:
        expected = cert.public_key() if cert is not None else owner_key
        opened = open_bundle(bundle, trusted_roots, trust_any_authority, expected_key=expected)  # type: ignore[arg-type]
        if pinned is None:
            from tracemark.ledger.identity import public_key_from_hex

            pinned = public_key_from_hex(json.loads(opened.members[MANIFEST])["owner_public_key"])
    if pinned is None:
        raise ReportError("nothing pins the owner: give --cert owner.cert.pem, --owner-pub owner.pub.pem or --bundle evidence.zip")
    signed: SignedPdf = check_signed_pdf(data, where, pinned, trusted_roots)
    document = signed.attachments.get(REPORT_JSON)
    try:
        values = json.loads(document) if document is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportSignatureError(f"{where}: the embedded {REPORT_JSON} is not JSON") from exc
    if not isinstance(values, dict) or values.get("format") != FORMAT or not isinstance(values.get("hashes"), dict):
        raise ReportSignatureError(f"{where}: not a tracemark ownership report (no {REPORT_JSON} in the signed file)")
    printed: dict[str, str] = values["hashes"]
    if printed.get("owner_certificate_sha256") != signed.certificate_sha256:
        raise ReportSignatureError(f"{where}: the report names another owner certificate than the one that signed it")
    matched = []
    if opened is not None:
        if not all(name in printed for name in ("manifest_sha256", "ledger_head")):
            raise ReportSignatureError(f"{where}: the report was made without an evidence bundle; it has no hashes to compare with {bundle}")
        for name, actual in opened.hashes().items():
            if name in printed and printed[name] != actual:
                raise ReportSignatureError(f"{where}: the {HASH_LABELS[name]} it prints ({printed[name][:24]}…) is not the bundle's "
                                           f"({actual[:24]}…); the report was made from another bundle")
            if name in printed:
                matched.append(HASH_LABELS[name].split(" (")[0])
        if printed.get("owner_fingerprint") != opened.summary.owner_fingerprint:
            raise ReportSignatureError(f"{where}: signed by another owner than the one whose ledger the bundle holds")
        if not any(k["key_commitment"] == printed.get("key_commitment") for k in opened.summary.keys):
            raise ReportSignatureError(f"{where}: the report's key is not committed in the bundle's ledger")
        matched.append("key commitment")
        warnings += opened.summary.warnings
    return ReportCheck(pdf=where, owner_fingerprint=signed.owner_fingerprint, certificate_sha256=signed.certificate_sha256,
                       signed_at=signed.signed_at, authority=signed.authority, verdict=str(values.get("verdict_label")),
                       claim=str(values.get("claim")), bundle=None if bundle is None else str(bundle), hashes_matched=matched,
                       warnings=warnings)
