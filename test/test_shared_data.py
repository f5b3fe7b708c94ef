"""The test data copied from the shared folder must not drift from it."""

from __future__ import annotations

import filecmp

import pytest
from conftest import DATA, SHARED


@pytest.mark.skipif(not SHARED.exists(), reason="../shared is not next to this checkout")
def test_copies_match_the_shared_folder():
    assert (DATA / "hostile_inputs.py").read_bytes() == \
        (SHARED / "corpus" / "hostile_inputs.py").read_bytes()
    cmp = filecmp.dircmp(DATA / "compat", SHARED / "compat")
    stack, differ = [cmp], []
    while stack:
        c = stack.pop()
        differ += c.diff_files + c.left_only + c.right_only
        stack += c.subdirs.values()
    assert differ == []


def test_corpus_is_complete():
    from hostile import entries

    assert len(entries("http")) >= 59 and len(entries("proxy-v1", "proxy-v2")) >= 32
    assert len(entries("slow")) == 3
