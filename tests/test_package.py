from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import lightning_automl


def test_version_matches_the_installed_distribution():
    assert importlib.metadata.version("lightning-automl") == lightning_automl.__version__


def test_public_packages_import_and_the_top_level_stays_light():
    code = (
        "import sys, lightning_automl; "
        "assert 'lightning' not in sys.modules and 'torch' not in sys.modules, 'heavy import'; "
        "import lightning_automl.data, lightning_automl.pretrained, lightning_automl.models; "
        "assert 'sklearn' not in sys.modules, 'scikit-learn imported before it is needed'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
