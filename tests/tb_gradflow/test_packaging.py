"""The wheel carries the tab: ``pip install .`` (not editable) must serve the same
frontend files as the editable install."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tb_gradflow import static

ROOT = Path(__file__).resolve().parents[2]

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def servable_files(folder: Path) -> dict[str, bytes]:
    """The frontend files the plugin would serve from ``folder``, by name."""
    names = [n for n in static.static_names(folder) if (folder / n).is_file()]
    return {n: (folder / n).read_bytes() for n in names}


def test_the_package_list_names_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("tb_gradflow", "trainkit")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk | {"tb_gradflow.frontend"}
    assert config["package-dir"] == {"tb_gradflow.frontend": "frontend"}


def test_the_editable_install_serves_the_checkout_frontend():
    assert Path(str(static.frontend_dir())) == ROOT / "frontend"


_CHECK = """
import json, sys
from tensorboard import default
from tensorboard.plugins import base_plugin
from werkzeug import test, wrappers
from tensorboard.backend import application
import tb_gradflow.plugin as p
import tb_gradflow.static as s

(loader,) = [x for x in default.get_dynamic_plugins() if x.__name__ == "GradFlowLoader"]
plugin = loader().load(base_plugin.TBContext())
client = test.Client(application.TensorBoardWSGI([plugin]), wrappers.Response)
served = {}
for name in s.static_names():
    r = client.get("/data/plugin/gradflow/" + name)
    if r.status_code == 200:
        served[name] = [r.headers["Content-Type"], r.get_data().hex()]
print(json.dumps({"plugin": p.__file__, "frontend": str(s.frontend_dir()),
                  "served": served, "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_a_non_editable_install_serves_the_same_files(tmp_path):
    src = tmp_path / "src"  # build from a copy: no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("tb_gradflow", "trainkit", "frontend"):
        shutil.copytree(
            ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path, src],
        check=True,
        timeout=120,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    (wheel,) = tmp_path.glob("tb_gradflow-*.whl")
    expected = servable_files(src / "frontend")  # the frontend may change meanwhile
    with zipfile.ZipFile(wheel) as z:
        shipped = {
            n.rsplit("/", 1)[1]: z.read(n)
            for n in z.namelist()
            if n.startswith("tb_gradflow/frontend/")
        }
        entry_points = next(
            z.read(n).decode() for n in z.namelist() if n.endswith("entry_points.txt")
        )
    assert shipped == expected
    assert "gradflow = tb_gradflow.loader:GradFlowLoader" in entry_points

    # A fresh venv that sees the project venv's packages (torch, tensorboard)
    # through a .pth line, but not its editable finder (.pth files are not read
    # in a directory that a .pth line adds).
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    Path(purelib, "project_venv.pth").write_text(sysconfig.get_paths()["purelib"])
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", purelib, wheel],
        check=True,
        timeout=120,
    )
    out = subprocess.run(
        [python, "-c", _CHECK],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    result = json.loads(out.stdout)
    assert result["plugin"].startswith(purelib)
    assert result["frontend"] == str(Path(purelib, "tb_gradflow", "frontend"))
    assert not result["torch"]
    served = {n: bytes.fromhex(body) for n, (_, body) in result["served"].items()}
    assert served == expected
    for name, (content_type, _) in result["served"].items():
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assert content_type == f"{kind}; charset=utf-8"


def readme_install_command() -> list[str]:
    """The command of the README's section "Installing it into your own
    environment" (its one bash block), split as a shell would."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Installing it into your own environment", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    (line,) = [ln for ln in block.splitlines() if ln.strip()]
    return shlex.split(line)


@pytest.mark.slow
def test_the_readmes_install_command_works_in_a_fresh_venv(tmp_path):
    """Runs the README's command as written, in a copy of the repository (as
    the README says: from the clone's folder), with the new venv's interpreter
    (``python -m pip``). Dependencies, pip and the build backend come from the
    project venv through a .pth line (no download)."""
    command = readme_install_command()
    assert command[:2] == ["pip", "install"]
    clone = tmp_path / "checkout"  # any name
    clone.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, clone / name)
    for name in ("tb_gradflow", "trainkit", "frontend"):
        shutil.copytree(
            ROOT / name, clone / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    Path(purelib, "project_venv.pth").write_text(sysconfig.get_paths()["purelib"])
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",  # nothing from the network: dependencies are there
        "PIP_NO_BUILD_ISOLATION": "0",  # the build backend seen through the .pth
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    subprocess.run(
        [python, "-m", *command, "-q"],
        check=True,
        timeout=300,
        cwd=clone,
        env=env,
    )
    code = (
        "import tb_gradflow, trainkit, tb_gradflow.plugin as p, matplotlib; "
        "print(p.__file__); print(tb_gradflow.watch.__module__)"
    )
    out = subprocess.run(
        [python, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    ).stdout.split()
    assert out[0].startswith(purelib) and out[1] == "tb_gradflow.collect"
    done = subprocess.run(
        [venv / "bin" / "tb-gradflow", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "usage: tb-gradflow" in done.stdout
