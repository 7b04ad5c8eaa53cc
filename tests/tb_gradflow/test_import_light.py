"""TensorBoard imports the plugin's entry point outside any ``try``: the modules
it loads must not import torch (slow, and ``tensorboard`` must start without it)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "code",
    [
        "import tb_gradflow",
        "import tb_gradflow.loader",
        "import tb_gradflow.plugin",
        # what `tensorboard` itself does: load every tensorboard_plugins entry point
        "from tensorboard import default; default.get_dynamic_plugins()",
    ],
)
def test_plugin_modules_do_not_import_torch(code):
    check = f"{code}; import sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
