"""The model card rendering: CommonMark + tables through markdown-it-py, with nothing a card could inject."""

from __future__ import annotations

from sonopacs.dashboard.markdown import render_markdown


def test_raw_html_and_script_links_are_text_not_markup() -> None:
    html = render_markdown('# T <script>alert(1)</script>\n\n<img src=x onerror=alert(1)> [js](javascript:alert(1))')
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and 'href="javascript' not in html


def test_tables_headings_and_only_web_links() -> None:
    html = render_markdown("## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[paper](https://doi.org/x) [file](roc.png)")
    assert "<h3>Results</h3>" in html  # one level down: the page has its own h1
    assert "<td>1</td>" in html
    assert '<a href="https://doi.org/x" rel="noopener">paper</a>' in html
    assert "roc.png" not in html and "file" in html
