"""docs/API.md is rendered from the docstrings (fastconv/_apidoc.py): it must be current, and every
public object documented."""
import os

from fastconv import _apidoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_api_reference_is_current():
    want = _apidoc.render()
    with open(os.path.join(ROOT, "docs", "API.md")) as f:
        assert f.read() == want, "docs/API.md is stale: python -m fastconv._apidoc > docs/API.md"
    assert "(undocumented)" not in want
