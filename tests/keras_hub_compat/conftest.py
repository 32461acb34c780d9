"""keras-hub's Gemma and Gemma 3 text tests, ported with only their imports renamed.

Tests that download a preset from Kaggle (keras-hub marks them
`kaggle_key_required`) are skipped: they need the network.
"""

import pytest


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="downloads a Kaggle preset (needs the network)")
    for item in items:
        if "kaggle_key_required" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    for marker in ("large", "extra_large", "kaggle_key_required"):
        config.addinivalue_line("markers", f"{marker}: keras-hub's test marker")
