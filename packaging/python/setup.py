"""Build hook of the Cipherdex Python client: the protobuf module cipherdex/cipherdex_pb2.py is
generated from proto/cipherdex.proto by protoc at build time (never committed). Metadata lives
in pyproject.toml.

Where the .proto comes from, first match wins: $CIPHERDEX_PROTO (a path to cipherdex.proto);
proto/cipherdex.proto next to this file (an sdist, which `sdist` fills in); ../../proto/ (the
repository: this file is packaging/python/setup.py); /usr/share/cipherdex/proto/ (installed).
The compiler is $PROTOC or `protoc` on the PATH (Debian: protobuf-compiler).

pip builds in place: the build/ and cipherdex.egg-info/ it leaves here are ignored by git.
$CIPHERDEX_BUILD_BASE (a directory) puts them there instead (the tests do, to leave the
source tree untouched).
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = "cipherdex.proto"


def find_proto():
    env = os.environ.get("CIPHERDEX_PROTO")
    if env:
        if not os.path.isfile(env):
            raise SystemExit(f"CIPHERDEX_PROTO={env}: no such file")
        return env
    for d in (os.path.join(HERE, "proto"), os.path.join(HERE, "..", "..", "proto"),
              "/usr/share/cipherdex/proto"):
        p = os.path.join(d, PROTO)
        if os.path.isfile(p):
            return os.path.normpath(p)
    raise SystemExit(f"{PROTO} not found (looked next to setup.py, in ../../proto and "
                     f"/usr/share/cipherdex/proto): set CIPHERDEX_PROTO to its path")


def run_protoc(out_dir):
    proto = find_proto()
    protoc = os.environ.get("PROTOC") or shutil.which("protoc")
    if not protoc:
        raise SystemExit("protoc not found: install protobuf-compiler (Debian) or set PROTOC")
    os.makedirs(out_dir, exist_ok=True)
    cmd = [protoc, f"--python_out={out_dir}", f"-I{os.path.dirname(proto)}", proto]
    print("generating cipherdex_pb2.py:", " ".join(cmd))
    subprocess.run(cmd, check=True)


class BuildPyWithProto(build_py):
    """build_py, then protoc into the built package (or, for an editable install, into the
    source package, where .gitignore keeps it out of the repository)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            run_protoc(os.path.join(HERE, "cipherdex"))
        else:
            run_protoc(os.path.join(self.build_lib, "cipherdex"))

    def get_outputs(self, include_bytecode=True):
        outs = super().get_outputs(include_bytecode)
        gen = os.path.join(self.build_lib, "cipherdex", "cipherdex_pb2.py")
        return outs if gen in outs else outs + [gen]


class SdistWithProto(sdist):
    """An sdist carries proto/cipherdex.proto, so it builds away from the repository."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        os.makedirs(os.path.join(base_dir, "proto"), exist_ok=True)
        shutil.copy2(find_proto(), os.path.join(base_dir, "proto", PROTO))


def build_options():
    base = os.environ.get("CIPHERDEX_BUILD_BASE")
    if not base:
        return {}
    base = os.path.abspath(base)
    os.makedirs(base, exist_ok=True)
    return {"build": {"build_base": os.path.join(base, "build")},
            "egg_info": {"egg_base": base}}


setup(packages=["cipherdex"], package_data={"cipherdex": ["py.typed"]},
      cmdclass={"build_py": BuildPyWithProto, "sdist": SdistWithProto}, options=build_options())
