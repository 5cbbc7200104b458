"""The pinned install: constraints.txt against setup.cfg's ranges, and the check that CI runs on the environment."""

import configparser
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version


REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "scripts" / "check_constraints.py"


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pins() -> dict[str, str]:
    result = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            result[normalize(name)] = version
    return result


def setup_cfg_requirements() -> list[tuple[str, Requirement]]:
    """`(where, requirement)` of install_requires and of every extra (`%(test)s`-style references left out)."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "setup.cfg")
    sections = {"install_requires": config["options"]["install_requires"]}
    sections.update({f"extra {name}": value for name, value in config["options.extras_require"].items()})
    return [
        (where, Requirement(line.strip()))
        for where, value in sections.items()
        for line in value.splitlines()
        if line.strip() and not line.strip().startswith("%(")
    ]


@pytest.mark.parametrize("where, requirement", setup_cfg_requirements(), ids=lambda item: str(item))
def test_every_requirement_is_pinned_within_its_range(where, requirement):
    pinned = pins().get(normalize(requirement.name))
    assert pinned is not None, f"{requirement} ({where} in setup.cfg) has no pin in constraints.txt"
    assert requirement.specifier.contains(pinned, prereleases=True), (
        f"constraints.txt pins {requirement.name}=={pinned}, outside setup.cfg's {requirement} ({where})"
    )


def test_the_media_code_is_tested_on_a_pyav_that_refuses_reads_of_closed_containers():
    # PyAV 18.1.1 raises "Container is not open" on any read of a stream after its container was closed (18.1.0 did
    # not): the suite runs every media probe and reader on it, so such a read cannot come back unseen
    assert Version(pins()["av"]) >= Version("18.1.1")


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, timeout=120)


def test_the_check_passes_on_the_environment_it_wrote_and_names_each_difference(tmp_path):
    written = tmp_path / "constraints.txt"
    result = run_check("--write", "--constraints", str(written))
    assert result.returncode == 0, result.stderr
    assert run_check("--constraints", str(written)).returncode == 0

    numpy = metadata.version("numpy")
    lines = written.read_text().splitlines()
    edited = [line.replace(f"numpy=={numpy}", "numpy==0.0.1") for line in lines if not line.startswith("jiwer==")]
    edited.append("not-a-real-package==1.0")
    written.write_text("\n".join(edited) + "\n")
    result = run_check("--constraints", str(written))
    assert result.returncode == 1
    assert f"numpy: pinned 0.0.1, installed {numpy}" in result.stderr
    assert f"jiwer: pinned -, installed {metadata.version('jiwer')}" in result.stderr
    assert "not-a-real-package: pinned 1.0, installed -" in result.stderr
    assert "differs from" in result.stderr and "in 3 packages" in result.stderr

    report = run_check("--report", "--constraints", str(written))
    assert report.returncode == 0
    assert "numpy" in report.stdout and "0.0.1" in report.stdout


def test_a_line_that_is_not_an_exact_pin_is_refused_naming_it(tmp_path):
    bad = tmp_path / "constraints.txt"
    bad.write_text("# a comment\nnumpy>=2\n")
    result = run_check("--constraints", str(bad))
    assert result.returncode != 0
    assert f"{bad}:2: 'numpy>=2' is not an exact pin" in result.stderr
