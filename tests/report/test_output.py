"""Specification of adnify.report.output (tables, files, plots) and adnify.report.selection (fronts, budgets)."""

from __future__ import annotations

import csv
import io
import json
import random
import sys

import pytest
from rich.console import Console

from adnify.report import output as ro
from adnify.report import selection
from adnify.errors import AdnifyError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTEXT = {"model": "resnet50", "device": "cpu", "dtype": "float32", "batch_size": 8, "macs_method": "fvcore"}


def row(pattern, skipped, gmacs, latency=None, acc1=None, **extra):
    return {"pattern": pattern, "skipped_blocks": skipped, "params": 25_600_000, "gmacs": gmacs,
            "latency_ms": latency, "latency_iqr_ms": None if latency is None else 0.5,
            "acc1": acc1, "acc5": None, "agreement": None, **extra}


@pytest.fixture
def rows():
    # FT is dominated by TT (cheaper and better); TF is slower than FF, so off the latency front.
    return [row("TT", 2, 2.6, 28.0, 76.0), row("FT", 1, 3.2, 33.0, 75.0),
            row("TF", 1, 3.5, 41.0, 76.5), row("FF", 0, 4.0, 40.0, 77.0)]


def text_of(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


class TestParetoFront:
    def test_cost_against_accuracy(self, rows):
        assert selection.pareto_front(rows, cost="gmacs", score="acc1") == {"TT", "TF", "FF"}
        assert selection.pareto_front(rows, cost="latency_ms", score="acc1") == {"TT", "FF"}

    def test_without_score_deeper_is_better(self, rows):
        # TF and FT skip as many blocks; FT is cheaper.
        assert selection.pareto_front(rows) == {"TT", "FT", "FF"}

    def test_ties_do_not_depend_on_row_order(self, rows):
        rows.append(row("XX", 2, 2.6, 28.0, 76.0))  # identical to TT
        fronts = set()
        for seed in range(5):
            random.Random(seed).shuffle(rows)
            fronts.add(frozenset(selection.pareto_front(rows, score="acc1")))
        assert fronts == {frozenset({"TT", "XX", "TF", "FF"})}

    def test_rows_without_the_metric_take_no_part(self, rows):
        rows[3]["acc1"] = None
        assert selection.pareto_front(rows, score="acc1") == {"TT", "TF"}
        for r in rows:
            r["latency_ms"] = None
        assert selection.pareto_front(rows, cost="latency_ms") == set()


class TestTable:
    def test_sorted_by_gmacs_with_front_marked(self, rows):
        text = text_of(ro.render_table(rows, title="resnet50-ADN", context=CONTEXT))
        lines = {p: next(line for line in text.splitlines() if line.lstrip("│ *").startswith(f"{p} "))
                 for p in ("FF", "TF", "FT", "TT")}
        assert [text.index(lines[p]) for p in ("FF", "TF", "FT", "TT")] == sorted(text.index(lines[p]) for p in lines)
        assert {p for p, line in lines.items() if "*" in line} == {"FF", "TF", "TT"}
        for header in ("GMACs", "Params (M)", "Latency ms (median ± IQR)", "Top-1 %"):
            assert header in text
        assert "Top-5 %" not in text and "Agreement %" not in text
        assert "28.0 ± 0.50" in text and "resnet50-ADN" in text and "macs_method=fvcore" in text

    def test_a_sub_network_that_a_cheaper_one_beats_names_it(self, rows):
        text = text_of(ro.render_table(rows, title="t", context=None))
        lines = {p: next(line for line in text.splitlines() if line.lstrip("│ *").startswith(f"{p} "))
                 for p in ("FF", "TF", "FT", "TT")}
        assert "Beaten by" in text and "1 of 4 sub-networks are beaten by a cheaper one" in " ".join(text.split())
        assert "TT (+1.00)" in lines["FT"]  # FT costs more than TT and scores a point less
        assert all("(+" not in lines[p] for p in ("FF", "TF", "TT"))
        markdown = ro.to_markdown(rows, context=None)  # the same table as a file
        assert "Beaten by" in markdown and next(l for l in markdown.splitlines() if "| FT |" in l).endswith("TT (+1.00) |")
        for r in rows:
            r["acc1"] = 80.0 - r["skipped_blocks"]  # deeper is better everywhere: nothing is beaten
        assert "Beaten by" not in text_of(ro.render_table(rows, title="t", context=None))

    def test_a_beaten_sub_network_is_told_what_one_image_is_worth(self, rows):
        # On 180 images a one-point lead is under two images: the footnote says so, table and Markdown alike.
        for render in (lambda c: text_of(ro.render_table(rows, title="t", context=c)),
                       lambda c: ro.to_markdown(rows, context=c)):
            assert "On 180 images one image is 0.56 points." in " ".join(render({"examples": 180}).split())
            assert "one image is" not in render(None)
        for r in rows:
            r["acc1"] = 80.0 - r["skipped_blocks"]  # nothing beaten: nothing to weigh
        assert "one image is" not in ro.to_markdown(rows, context={"examples": 180})

    def test_only_measured_columns(self, rows):
        for r in rows:
            r.update(latency_ms=None, latency_iqr_ms=None, acc1=None, agreement=99.0)
        text = text_of(ro.render_table(rows, title="t", context=None))
        assert "Latency" not in text and "Top-1" not in text and "Agreement %" in text


class TestFiles:
    def test_json_round_trip_keeps_schema(self, rows):
        doc = json.loads(ro.to_json(rows, context=CONTEXT))
        assert set(doc) == {"schema_version", "adnify_version", "context", "pareto_score", "rows", "pareto",
                            "beaten_by"}
        assert doc["beaten_by"] == {"FT": {"pattern": "TT", "margin": 1.0}}
        assert doc["schema_version"] == ro.REPORT_SCHEMA_VERSION == 1
        assert isinstance(doc["adnify_version"], str) and doc["context"] == CONTEXT
        assert doc["pareto_score"] == "acc1"
        assert [r["pattern"] for r in doc["rows"]] == ["FF", "TF", "FT", "TT"]
        assert sorted(doc["rows"], key=lambda r: r["pattern"]) == sorted(rows, key=lambda r: r["pattern"])
        assert list(doc["rows"][0]) == list(ro.ROW_KEYS)
        assert doc["pareto"] == {"gmacs": ["TT", "TF", "FF"], "latency_ms": ["TT", "FF"]}

    def test_csv(self, rows):
        parsed = list(csv.DictReader(io.StringIO(ro.to_csv(rows))))
        assert [r["pattern"] for r in parsed] == ["FF", "TF", "FT", "TT"]
        assert parsed[3] == {"pattern": "TT", "skipped_blocks": "2", "params": "25600000", "gmacs": "2.6",
                             "latency_ms": "28.0", "latency_iqr_ms": "0.5", "acc1": "76.0", "acc5": "",
                             "agreement": "", "pareto_gmacs": "1", "pareto_latency": "1"}
        assert parsed[1]["pareto_latency"] == "0"

    def test_markdown(self, rows):
        md = ro.to_markdown(rows, context=CONTEXT)
        assert "- **model**: resnet50" in md
        assert "| * | FF | 0 | 25.60 | 4.000 | 40.0 ± 0.50 | 77.00 |" in md
        assert "|  | FT |" in md and "Pareto-optimal" in md

    @pytest.mark.parametrize("fmt", ["json", "csv", "md"])
    def test_write_refuses_existing_file_without_force(self, rows, tmp_path, fmt):
        path = tmp_path / f"report.{fmt}"
        path.write_text("old")
        with pytest.raises(AdnifyError, match="already exists"):
            ro.write_report(rows, path, fmt, context=CONTEXT, force=False)
        assert path.read_text() == "old"
        assert ro.write_report(rows, path, fmt, context=CONTEXT, force=True) == path
        assert "TT" in path.read_text()
        assert [p.name for p in tmp_path.iterdir()] == [path.name]

    def test_failed_write_leaves_no_file(self, rows, tmp_path, monkeypatch):
        def boom(*a, **k):
            raise RuntimeError("disk on fire")
        monkeypatch.setattr(ro, "to_json", boom)
        with pytest.raises(RuntimeError):
            ro.write_report(rows, tmp_path / "r.json", "json", context=CONTEXT, force=False)
        assert list(tmp_path.iterdir()) == []

    def test_unknown_format(self, rows, tmp_path):
        with pytest.raises(AdnifyError, match="json, csv, md"):
            ro.write_report(rows, tmp_path / "r.xml", "xml", context=None, force=False)


class TestPlot:
    def test_writes_png_with_labels(self, rows, tmp_path):
        path = ro.plot_report(rows, tmp_path / "report.png", context=CONTEXT)
        assert path.read_bytes()[:8] == PNG_MAGIC
        fig = ro.report_figure(rows, context=CONTEXT)
        assert len(fig.axes) == 2
        for ax in fig.axes:
            assert {t.get_text() for t in ax.texts} == {"FF", "TF", "FT", "TT"}
        with pytest.raises(AdnifyError, match="already exists"):
            ro.plot_report(rows, path, context=CONTEXT)

    def test_one_panel_without_latency_and_depth_score(self, tmp_path):
        rows = [row("".join(p), sum(c == "T" for c in p), 4.0 - 0.2 * i)
                for i, p in enumerate(f"{n:06b}".replace("0", "F").replace("1", "T") for n in range(64))]
        fig = ro.report_figure(rows, context=None)
        assert len(fig.axes) == 1
        # sub-networks at the same spot share one label; every pattern is named once
        assert sorted(" ".join(t.get_text() for t in fig.axes[0].texts).split()) == sorted(r["pattern"] for r in rows)
        assert "Skipped blocks" in fig.axes[0].get_ylabel()
        assert ro.plot_report(rows, tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC

    def test_missing_matplotlib_gives_install_hint(self, rows, tmp_path, monkeypatch):
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
        with pytest.raises(AdnifyError, match=r'pip install "adnify\[plot\]"'):
            ro.plot_report(rows, tmp_path / "p.png", context=None)
        assert not (tmp_path / "p.png").exists()


class TestBudget:
    def test_best_accuracy_within_budget(self, rows):
        assert selection.select_within_budget(rows)["pattern"] == "FF"
        assert selection.select_within_budget(rows, budget_ms=35)["pattern"] == "TT"
        assert selection.select_within_budget(rows, budget_gmacs=3.6)["pattern"] == "TF"
        assert selection.select_within_budget(rows, budget_ms=40, budget_gmacs=3.6)["pattern"] == "TT"

    def test_without_accuracy_deepest_then_cheapest(self, rows):
        for r in rows:
            r["acc1"] = None
        assert selection.select_within_budget(rows, budget_gmacs=3.6)["pattern"] == "FT"

    def test_nothing_fits(self, rows):
        with pytest.raises(AdnifyError, match=r"no sub-network runs within 5 ms: the fastest, TT, takes 28\.0 ms"):
            selection.select_within_budget(rows, budget_ms=5)
        with pytest.raises(AdnifyError, match=r"within 1 GMACs: the cheapest, TT, needs 2\.6 GMACs"):
            selection.select_within_budget(rows, budget_gmacs=1.0)
        rows[0]["latency_ms"] = 50.0  # TT is now the cheapest but not the fastest
        msg = r"runs within 35 ms and fits within 3 GMACs: the fastest, FT, takes 33\.0 ms; the cheapest, TT,"
        with pytest.raises(AdnifyError, match=msg):  # each budget alone can be met, both together cannot
            selection.select_within_budget(rows, budget_ms=35, budget_gmacs=3.0)
        for r in rows:
            r["latency_ms"] = None
        with pytest.raises(AdnifyError, match="measured latencies"):
            selection.select_within_budget(rows, budget_ms=50)
