"""Both ways to get the package: `pip install --no-deps ./clients/python`
(stubs generated into the installed package) and a checkout (stubs from the
build tree). The install runs on a copy of the checkout's client and proto/,
so the source tree gets no build files."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster import Cluster

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(participants=2).start_all()
    yield c
    c.stop()


USE = textwrap.dedent("""
    import atomq, atomq.v1.coordinator_pb2 as stubs
    print(atomq.__file__)
    print(stubs.__file__)
    client = atomq.Client.from_env()
    client.create_queue("p1", "installed", exist_ok=True)
    client.create_queue("p2", "installed", exist_ok=True)
    r = client.execute(enqueue=[("p1", "installed", b"a"), ("p2", "installed", b"b")])
    print(r.outcome, r.sequences)
""")


def test_pip_install_generates_the_stubs(tmp_path, cluster):
    tree = tmp_path / "checkout"
    shutil.copytree(ROOT / "clients" / "python", tree / "clients" / "python",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    shutil.copytree(ROOT / "proto", tree / "proto")
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index",
                          "./clients/python"], cwd=tree, capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = installed / "site-packages" / "atomq"
    assert (site / "v1" / "participant_pb2_grpc.py").exists()
    assert (site / "v1" / "coordinator_pb2.pyi").exists()
    env = {k: v for k, v in cluster.env().items() if k not in ("ATOMQ_PY_STUBS", "PYTHONPATH")}
    r = subprocess.run([str(venv / "bin" / "python"), "-c", USE], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(site / "__init__.py") and lines[1] == str(site / "v1" / "coordinator_pb2.py")
    assert lines[2] == "COMMITTED [1, 1]"
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "atomq", "--help"], cwd=tmp_path,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "receive" in r.stdout


def test_checkout_uses_the_build_trees_stubs(tmp_path, cluster):
    env = {**cluster.env(), "PYTHONPATH": str(ROOT / "clients" / "python")}
    r = subprocess.run(["/usr/bin/python3", "-c", USE], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(ROOT / "clients" / "python" / "atomq" / "__init__.py")
    assert lines[1].endswith("/python/atomq/v1/coordinator_pb2.py")
    assert not lines[1].startswith(str(ROOT / "clients"))  # generated, not in the sources
    assert lines[2].startswith("COMMITTED [")

    # Without stubs anywhere the import says how to make them.
    bare = tmp_path / "bare"
    shutil.copytree(ROOT / "clients" / "python" / "atomq", bare / "clients" / "python" / "atomq",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in env.items() if k != "ATOMQ_PY_STUBS"}
    env["PYTHONPATH"] = str(bare / "clients" / "python")
    r = subprocess.run(["/usr/bin/python3", "-c", "import atomq"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "atomq_python_stubs" in r.stderr
