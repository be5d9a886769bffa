import json

from jaxexit import report


def test_markdown_table():
  text = report.markdown_table(["a", "b"], [[1, "x"], [2.5, None]])
  assert text.splitlines() == [
    "| a | b |",
    "|---|---|",
    "| 1 | x |",
    "| 2.5 | None |",
  ]


def test_write_section_replaces_only_its_block(tmp_path):
  path = tmp_path / "B.md"
  path.write_text("# Benchmarks\n\nintro\n")
  report.write_section(path, "modes", "first")
  report.write_section(path, "other", "keep me")
  report.write_section(path, "modes", "second")
  text = path.read_text()
  assert "intro" in text and "keep me" in text and "second" in text
  assert "first" not in text and text.count("<!-- modes:start -->") == 1


def test_write_json(tmp_path):
  report.write_json(tmp_path / "sub" / "r.json", [{"a": 1}])
  assert json.loads((tmp_path / "sub" / "r.json").read_text()) == [{"a": 1}]
