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


def test_public_names_survive_importing_every_submodule():
    """A public name that is also a submodule's name is replaced by the module
    once the submodule is imported (``tb_gradflow.diagnose`` once stopped being
    the function after ``watch`` imported the module of the same name)."""
    code = """
import importlib, pkgutil, types
import tb_gradflow
for info in pkgutil.walk_packages(tb_gradflow.__path__, "tb_gradflow."):
    if ".integrations." not in info.name:
        importlib.import_module(info.name)
for name in tb_gradflow.__all__:
    value = getattr(tb_gradflow, name)
    assert not isinstance(value, types.ModuleType), name
assert callable(tb_gradflow.diagnose) and callable(tb_gradflow.watch)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
