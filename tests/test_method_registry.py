"""Method metadata: family, paper, year and taps for every method, and docs/design.md's table generated from them."""
import re
from pathlib import Path

import pytest

from distillscope.cli import main
from distillscope.errors import DistillscopeError
from distillscope.methods import create_method, list_methods
from distillscope.methods.base import DistillMethod
from distillscope.methods.registry import FAMILIES, METHODS, method_table, methods_markdown, register_method
from distillscope.models import create_model

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def test_every_method_has_family_paper_year_and_taps():
    rows = method_table()
    assert sorted(row["name"] for row in rows) == list_methods()
    for row in rows:
        assert row["family"] in FAMILIES and row["taps"], row
        if row["family"] != "baseline":
            assert row["paper"] and 1990 < row["year"] < 2100, row


def test_taps_column_matches_what_each_method_taps():
    """Logit-only methods tap no features; every other one describes its default taps by their kinds."""
    student, teacher = create_model("resnet8"), create_model("wrn_16_2")
    for row in method_table():
        cls = METHODS.get(row["name"])
        student_taps, teacher_taps = create_method(row["name"]).taps(student, teacher)
        kinds = {spec.split(":")[0] for spec in [*student_taps.values(), *teacher_taps.values()]}
        if cls.taps is DistillMethod.taps:
            assert not kinds and re.search(r"logits|predictions|labels", row["taps"]), row
        else:
            assert kinds and all(kind in row["taps"] for kind in kinds), (row, kinds)


def test_unknown_family_and_missing_paper_are_refused_at_registration():
    with pytest.raises(DistillscopeError, match="unknown family 'magic'; valid: baseline") as err:
        register_method("never_registered", family="magic", paper="X et al., Y", year=2020)
    assert "\n" not in str(err.value)
    with pytest.raises(DistillscopeError, match="give paper="):
        register_method("never_registered", family="logit")
    assert "never_registered" not in list_methods()


def test_docs_methods_table_is_the_generated_one():
    text = DESIGN.read_text()
    found = re.search(r"<!-- methods table:[^\n]*-->\n(.*?)\n<!-- /methods table -->", text, re.S)
    assert found, "docs/design.md lost its methods table markers"
    assert found.group(1) == methods_markdown(), "regenerate docs/design.md's methods table: distillscope list methods"


def test_cli_list_methods_prints_the_table(capsys):
    assert main(["list", "methods"]) == 0
    assert capsys.readouterr().out.strip() == methods_markdown()
