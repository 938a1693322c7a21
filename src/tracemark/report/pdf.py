"""The report as a PDF, drawn with matplotlib (no browser, no new dependency): A4 pages of wrapped text and figures."""

from __future__ import annotations

import io
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracemark.report.ownership import Report

A4 = (8.27, 11.69)
MARGIN = 0.75
BANNER = {"copy": "#8e1b1b", "no-evidence": "#455a64", "inconclusive": "#e65100"}


class _Pages:
    """A cursor over A4 pages: text flows down, a new page starts when the next block does not fit."""

    def __init__(self, pdf, plt) -> None:  # noqa: ANN001 (matplotlib objects)
        self.pdf, self.plt, self.fig, self.y, self.page = pdf, plt, None, 0.0, 0

    def _new_page(self) -> None:
        self.close()
        self.fig = self.plt.figure(figsize=A4)
        self.page += 1
        self.fig.text(0.5, 0.4 / A4[1], f"tracemark ownership report · page {self.page}", ha="center", fontsize=7, color="#666666")
        self.y = A4[1] - MARGIN

    def close(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.plt.close(self.fig)
            self.fig = None

    def room(self, height: float) -> None:
        if self.fig is None or self.y - height < MARGIN:
            self._new_page()

    def text(self, text: str, size: float = 9.5, weight: str = "normal", colour: str = "#1b1b1b", mono: bool = False,
             indent: float = 0.0, after: float = 0.04) -> None:
        width = A4[0] - 2 * MARGIN - indent
        chars = max(20, int(width * 72 / (size * (0.61 if mono else 0.62 if weight == "bold" else 0.55))))
        line_height = size * 1.38 / 72
        for line in textwrap.wrap(text, chars, break_long_words=True) or [""]:
            self.room(line_height)
            self.y -= line_height
            self.fig.text((MARGIN + indent) / A4[0], self.y / A4[1], line, fontsize=size, fontweight=weight, color=colour,
                          family="DejaVu Sans Mono" if mono else "DejaVu Sans", va="bottom")
        self.y -= after

    def heading(self, text: str) -> None:
        self.room(0.7)
        self.y -= 0.14
        self.text(text, size=13, weight="bold", after=0.08)

    def banner(self, text: str, subtitle: str, colour: str) -> None:
        from matplotlib.patches import Rectangle

        self.room(1.0)
        height = 0.95
        self.fig.patches.append(Rectangle((MARGIN / A4[0], (self.y - height) / A4[1]), 1 - 2 * MARGIN / A4[0], height / A4[1],
                                          transform=self.fig.transFigure, color=colour, zorder=0))
        top = self.y
        self.y -= 0.12
        self.text(text, size=14, weight="bold", colour="white", indent=0.15, after=0.02)
        self.text(subtitle, size=9, colour="white", indent=0.15)
        self.y = top - height - 0.15

    def image(self, png: bytes, width: float) -> None:
        image = self.plt.imread(io.BytesIO(png), format="png")
        height = width * image.shape[0] / image.shape[1]
        self.room(height + 0.1)
        ax = self.fig.add_axes([MARGIN / A4[0], (self.y - height) / A4[1], width / A4[0], height / A4[1]])
        ax.imshow(image, interpolation="antialiased")
        ax.axis("off")
        self.y -= height + 0.1


def render_pdf(report: "Report") -> bytes:
    """The unsigned PDF of ``report`` (same content and order as the HTML), fonts embedded as TrueType."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    from tracemark.report.ownership import HASH_LABELS
    from tracemark.report.ownership_plots import answers_grid_png, null_distribution_png

    buffer = io.BytesIO()
    v = report.verdict
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(buffer, metadata={
            "Title": f"{report.title}: {report.verdict_label}", "Author": report.owner, "Subject": report.claim,
            "Creator": "tracemark report"}) as pdf:
        pages = _Pages(pdf, plt)
        pages.banner(report.evidence[0]["result"], f"{report.title} · made {report.created}", BANNER[report.verdict_label])
        pages.heading("1. What is claimed")
        pages.text(report.claim, size=11)
        pages.heading("2. When each thing happened, and who vouches for the date")
        if not report.timeline:
            pages.text("No ledger timeline: no evidence bundle was given.")
        for t in report.timeline:
            pages.text(f"{t['date']} — {t['event']}.", weight="bold", after=0.0)
            pages.text(("Independently dated. " if t["independent"] else "") + f"Vouched for by {t['vouched_by']}.", size=8.5,
                       colour="#37474f", indent=0.2, after=0.08)
        pages.heading("3. The evidence")
        for e in report.evidence:
            pages.text(e["title"], size=9, colour="#37474f", after=0.0)
            pages.text(e["result"], size=11, weight="bold")
            pages.text(e["rule"])
            if e["observed"]:
                pages.text(e["observed"])
            for d in e["details"]:
                pages.text(d, size=8.5, colour="#37474f", after=0.0)
            pages.y -= 0.08
            if e["kind"] == "trigger" and v["answered"]:
                pages.image(null_distribution_png(v["matches"], v["answered"], float(v["null"]["rate"]), v["threshold"]), 6.2)
        pages.heading("4. The trigger images and the suspect's answers")
        if report.trigger_inputs is not None and report.triggers:
            pages.text("Each image was shown to the suspect. Caption: our secret answer / the suspect's. Green: the same; red: different.")
            pages.image(answers_grid_png(report.trigger_inputs, [t["label"] for t in report.triggers],
                                         [t["answer"] for t in report.triggers]), 6.4)
        else:
            pages.text("Not shown: the key is not revealed (give --key).")
        pages.heading("5. What survived the robustness lab")
        if report.robustness is None:
            pages.text("No robustness result was given.")
        else:
            pages.text(report.robustness["sentence"])
            for row in report.robustness["rows"]:
                mark = "survived" if row["survived"] else f"removed by {row['removed_by']}"
                pages.text(f"{row['kind']}: strongest {row['attack']}; thief keeps {row['thief_accuracy']} ({row['change']}); "
                           f"verdict {row['verdict']}, p {row['p_value']}; {mark}", size=8.5, indent=0.2, after=0.0)
        pages.heading("6. How to check all of this independently")
        for c in report.checks:
            pages.text(c["what"] + ":", after=0.0)
            pages.text(c["command"], size=8, mono=True, indent=0.2, after=0.06)
        for name, value in report.hashes.items():
            pages.text(HASH_LABELS.get(name, name), size=8.5, weight="bold", after=0.0)
            pages.text(value, size=8, mono=True, indent=0.2, after=0.03)
        pages.text(f"This PDF is signed with the owner's key (PAdES) and time-stamped by the RFC 3161 authority at {report.tsa_url}; "
                   f"it embeds the HTML report and these values (tracemark-report.json) under the signature.", size=8.5, colour="#37474f")
        for note in report.notes:
            pages.text(f"Note: {note}", size=8.5, colour="#37474f", after=0.0)
        pages.close()
    return buffer.getvalue()
