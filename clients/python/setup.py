"""Installs the atomq client; its gRPC stubs are generated from proto/ here.

    python3 -m venv --system-site-packages .venv     # sees Debian's grpcio, protobuf
    .venv/bin/pip install --no-deps ./clients/python

Needs Debian's protoc (protobuf-compiler) and grpc_python_plugin
(protobuf-compiler-grpc). The .proto files are read from ../../proto (the
checkout), or from ATOMQ_PROTO_DIR.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTOS = ["atomq/v1/types.proto", "atomq/v1/coordinator.proto", "atomq/v1/participant.proto"]


def proto_dir() -> Path:
    d = Path(os.environ.get("ATOMQ_PROTO_DIR", HERE.parents[1] / "proto"))
    if not (d / PROTOS[0]).exists():
        raise SystemExit(f"atomq: no {PROTOS[0]} under {d}; set ATOMQ_PROTO_DIR")
    return d


def generate(out: Path) -> None:
    """Writes atomq/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py under `out`."""
    plugin = shutil.which("grpc_python_plugin")
    protoc = shutil.which("protoc")
    if not plugin or not protoc:
        raise SystemExit("atomq: protoc and grpc_python_plugin are needed "
                         "(apt-get install protobuf-compiler protobuf-compiler-grpc)")
    src = proto_dir()
    (out / "atomq" / "v1").mkdir(parents=True, exist_ok=True)
    subprocess.run([protoc, f"-I{src}", f"--python_out={out}", f"--pyi_out={out}",
                    f"--grpc_python_out={out}", f"--plugin=protoc-gen-grpc_python={plugin}",
                    *[str(src / p) for p in PROTOS]], check=True)
    (out / "atomq" / "v1" / "__init__.py").write_text('"""Generated from proto/atomq/v1."""\n')


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


setup(
    name="atomq",
    version="0.1.0",
    description="Python client of atomq: atomic enqueues and acks across queue nodes",
    packages=["atomq"],
    package_data={"atomq": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=["grpcio", "protobuf"],
    cmdclass={"build_py": BuildWithStubs},
)
