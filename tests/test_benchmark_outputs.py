"""benchmarks/outputs.py: a docs page's marked section replaced and nothing else, charts and files
written whole (no temporary file left beside them)."""

from __future__ import annotations

from tests.conftest import load_benchmark


def test_fill_section_replaces_only_between_the_markers(tmp_path):
    outputs = load_benchmark("outputs")
    page = tmp_path / "performance.md"
    page.write_text("# Perf\n\nintro\n<!-- t -->\nold table\n<!-- t -->\n\nafter\n", encoding="utf-8")
    outputs.fill_section(page, "<!-- t -->", "| a |\n|---|\n")
    assert page.read_text(encoding="utf-8") == "# Perf\n\nintro\n<!-- t -->\n| a |\n|---|\n<!-- t -->\n\nafter\n"
    outputs.fill_section(page, "<!-- t -->", "new")  # twice: still one section
    assert page.read_text(encoding="utf-8").count("<!-- t -->") == 2 and "| a |" not in page.read_text()


def test_fill_section_with_two_markers_and_a_page_without_them(tmp_path):
    outputs = load_benchmark("outputs")
    page = tmp_path / "deploy.md"
    page.write_text("# Deploy\ntext", encoding="utf-8")
    outputs.fill_section(page, "<!-- s -->", "rows", "<!-- /s -->")
    assert page.read_text(encoding="utf-8") == "# Deploy\ntext\n<!-- s -->\nrows\n<!-- /s -->\n"
    outputs.fill_section(page, "<!-- s -->", "other", "<!-- /s -->")
    assert page.read_text(encoding="utf-8") == "# Deploy\ntext\n<!-- s -->\nother\n<!-- /s -->\n"
    fresh = tmp_path / "new" / "page.md"
    outputs.fill_section(fresh, "<!-- s -->", "x")
    assert fresh.read_text(encoding="utf-8") == "<!-- s -->\nx\n<!-- s -->\n"


def test_a_chart_and_jsonl_are_written_under_their_names_only(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs = load_benchmark("outputs")
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    outputs.save_figure(fig, tmp_path / "c.png")
    outputs.write_jsonl(tmp_path / "r.jsonl", [{"a": "é"}, {"b": 2}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "r.jsonl"]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "r.jsonl").read_text(encoding="utf-8") == '{"a": "é"}\n{"b": 2}\n'
