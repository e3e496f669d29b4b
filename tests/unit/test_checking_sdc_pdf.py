"""PDF outputs (:mod:`sde_airlock.sdc.pdf`): their text goes through the identifier and text
rules (pages, annotations, form fields, document information), and what the checks cannot see
in them (embedded files, JavaScript, encryption, bytes pypdf cannot parse) says so."""

from __future__ import annotations

import io

import pytest

from sde_airlock import sdc

pypdf = pytest.importorskip("pypdf")
NHS = "943 476 5919"


def rules_hit(report: sdc.Report) -> set[tuple[str, str]]:
    return {(f.rule, f.status) for f in report.findings}


def figure_pdf(title: str, fonttype: int = 42) -> bytes:
    """A bar chart saved as PDF by matplotlib, as a researcher's ``savefig`` writes it."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"pdf.fonttype": fonttype}):
        fig, ax = plt.subplots()
        ax.bar(["north", "south"], [120, 45])
        ax.set_title(title)
        out = io.BytesIO()
        fig.savefig(out, format="pdf")
        plt.close(fig)
    return out.getvalue()


def written(build) -> bytes:
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(figure_pdf("Admissions by region")))
    build(writer)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("fonttype", [3, 42])  # matplotlib's two ways of embedding fonts
def test_an_identifier_in_a_figure_s_text_fails_and_a_clean_figure_does_not(fonttype):
    report = sdc.check("plot.pdf", figure_pdf(f"Patient {NHS}", fonttype))
    assert ("nhs_number", "fail") in rules_hit(report)
    (finding,) = [f for f in report.findings if f.rule == "nhs_number"]
    assert finding.where == "PDF page 1"
    clean = sdc.check("plot.pdf", figure_pdf("Admissions by region", fonttype))
    assert clean.status == "info", clean.findings  # the picture itself: by eye
    assert ("manual", "info") in rules_hit(clean)


def test_identifiers_in_metadata_annotations_and_form_text_are_found():
    from pypdf.annotations import Text

    meta = written(lambda w: w.add_metadata({"/Author": f"ref {NHS}"}))
    (finding,) = [f for f in sdc.check("r.pdf", meta).findings if f.rule == "nhs_number"]
    assert finding.where == "PDF document information"

    def annotate(w):
        w.add_annotation(0, Text(rect=(50, 50, 200, 100), text=f"patient {NHS} is the outlier"))

    (finding,) = [
        f for f in sdc.check("r.pdf", written(annotate)).findings if f.rule == "nhs_number"
    ]
    assert finding.where == "PDF page 1 annotations"


def test_javascript_embedded_files_and_encryption_are_not_passed():
    from pypdf.actions import JavaScript

    js = sdc.check("r.pdf", written(lambda w: w.add_open_action(JavaScript("app.alert(1);"))))
    assert ("script", "fail") in rules_hit(js)
    attached = sdc.check("r.pdf", written(lambda w: w.add_attachment("rows.csv", b"id\n1\n")))
    assert ("attachment", "not_fully_checked") in rules_hit(attached)
    assert "rows.csv" in next(f.message for f in attached.findings if f.rule == "attachment")
    locked = sdc.check("r.pdf", written(lambda w: w.encrypt("secret", algorithm="AES-128")))
    assert ("not_fully_checked", "not_fully_checked") in rules_hit(locked)
    # an empty user password opens it: then its text is read as any other
    opened = written(lambda w: (w.add_metadata({"/Title": NHS}), w.encrypt("", "owner")))
    assert ("nhs_number", "fail") in rules_hit(sdc.check("r.pdf", opened))


def test_bytes_pypdf_cannot_parse_are_not_fully_checked():
    report = sdc.check("r.pdf", b"%PDF-1.7\n" + b"\x00garbage" * 100)
    assert report.status in ("not_fully_checked", "fail")
    assert "not_fully_checked" in {f.status for f in report.findings}


def test_an_empty_annotation_is_not_a_script_and_an_annotation_s_javascript_is():
    from pypdf.annotations import Text
    from pypdf.generic import DictionaryObject, NameObject, TextStringObject

    def empty_note(w):
        w.add_annotation(0, Text(rect=(50, 50, 200, 100), text=""))

    report = sdc.check("r.pdf", written(empty_note))
    assert "script" not in {f.rule for f in report.findings}, report.findings

    def scripted_note(w):
        annot = Text(rect=(50, 50, 200, 100), text="see here")
        annot[NameObject("/A")] = DictionaryObject(
            {
                NameObject("/S"): NameObject("/JavaScript"),
                NameObject("/JS"): TextStringObject("app.alert(1);"),
            }
        )
        w.add_annotation(0, annot)

    assert ("script", "fail") in rules_hit(sdc.check("r.pdf", written(scripted_note)))
