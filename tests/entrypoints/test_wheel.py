"""sssi as an installed package: a wheel built from the checkout, installed without ``-e``
into a fresh virtual environment, runs its console scripts from a folder outside the
repository with the configs it carries (``sssi/conf``).

The fresh environment gets the wheel only; its dependencies (the CPU torch the
Makefile installs, Lightning, Hydra, ...) are borrowed from the test environment through
a path file, so the test needs no network and checks what the wheel itself holds."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import rasterio
import tomllib
from setuptools import find_namespace_packages, find_packages

from tests.helpers import REPO, removed_after

SCRIPTS = ("sssi-train", "sssi-evaluate", "sssi-predict", "sssi-aggregate", "sssi-export",
           "sssi-synthetic", "sssi-plot", "sssi-demo", "sssi-probe", "sssi-select")


def test_every_module_and_config_group_is_packaged_and_every_command_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(SCRIPTS) <= set(project["project"]["scripts"])
    groups = [f"sssi.conf.{name}" for name in find_namespace_packages(where=str(REPO / "conf"))]
    needed = [*find_packages(where=str(REPO), include=["sssi", "sssi.*"]), "sssi.conf", *groups]
    assert sorted(project["tool"]["setuptools"]["packages"]) == sorted(needed)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600
         ) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[tuple[Path, dict[str, str]]]:
    """``(bin folder, environment)`` of a fresh venv holding only the wheel of sssi."""
    with removed_after(tmp_path_factory.mktemp("wheel")) as base:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PYTHONUNBUFFERED"] = "1"
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
              "--no-build-isolation", "--wheel-dir", str(base / "dist"), str(REPO)], base, env)
        wheel = next((base / "dist").glob("sssi-*.whl"))
        venv = base / "venv"
        _run([sys.executable, "-m", "venv", str(venv)], base, env)
        py = venv / "bin" / "python"
        _run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
             base, env)
        # the dependencies: this environment's site-packages, after the venv's own (a path
        # file adds the folder only; its .pth files, such as an editable sssi, stay inactive)
        purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       base, env).stdout.strip()
        deps = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
        Path(purelib, "sssi_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
        yield venv / "bin", env


@pytest.mark.slow
def test_the_wheel_carries_its_configs_and_runs_every_stage_outside_the_repo(
        installed, tmp_path):
    bin_dir, env = installed
    where = _run([str(bin_dir / "python"), "-c",
                  "import sssi, sssi.cli; print(sssi.__file__); print(sssi.cli.CONFIG_DIR)"],
                 tmp_path, env).stdout.split()
    site_dir = Path(where[0]).parent.parent
    assert REPO not in Path(where[0]).parents  # the installed copy, not the checkout
    assert Path(where[1]) == site_dir / "sssi" / "conf"
    shipped = {p.relative_to(where[1]) for p in Path(where[1]).rglob("*.yaml")}
    assert shipped == {p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml")}
    assert all((bin_dir / name).is_file() for name in SCRIPTS)

    work = tmp_path / "work"  # outside the repository
    work.mkdir()
    data = work / "data"
    _run([str(bin_dir / "sssi-synthetic"), "--out", str(data), "--tiles", "3", "--size",
          "256"], work, env)
    run = work / "run"
    _run([str(bin_dir / "sssi-train"), "+debug=tiny", f"data.root={data}",
          "trainer.max_steps=2", "test=false", f"hydra.run.dir={run}"], work, env)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    _run([str(bin_dir / "sssi-evaluate"), f"ckpt={ckpt}", f"data.root={data}", "window=128",
          "stride=128", "progress=false", "save_predictions=false",
          f"hydra.run.dir={work / 'evaluation'}"], work, env)
    assert (work / "evaluation" / "metrics.json").is_file()
    image = next((data / "2_Ortho_RGB").glob("*.tif"))
    _run([str(bin_dir / "sssi-predict"), f"ckpt={ckpt}", f"input={image}",
          f"output={work / 'map.tif'}", "progress=false",
          f"hydra.run.dir={work / 'predict'}"], work, env)
    with rasterio.open(work / "map.tif") as ds:
        assert (ds.width, ds.height) == (256, 256)
    # where to label: the shipped selector group, then training on the ranking
    _run([str(bin_dir / "sssi-select"), "+debug=tiny", f"data.root={data}", "selector=texture",
          "select.picture=false", f"hydra.run.dir={work / 'select'}"], work, env)
    assert (work / "select" / "regions.json").is_file()
    # Hydra's own --help lists the packaged config groups
    groups = _run([str(bin_dir / "sssi-train"), "--help"], work, env).stdout
    assert "experiment:" in groups and "debug:" in groups
