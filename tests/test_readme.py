"""The README's op table is the registry's: regenerate it with `dlkern info --markdown-table`."""
import pathlib

from dlkern import cli

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_op_table_matches_the_registry():
    assert cli.markdown_table() in README.read_text(), \
        "README.md's op table is stale: paste the output of `dlkern info --markdown-table`"
