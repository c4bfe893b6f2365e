"""Build driver: setup.py only runs CMake (csrc/) and maps runtime/ to the `slimrt` package."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "csrc" / "include" / "slimrt.h").read_text()
    major, minor, patch = (re.search(rf"#define SLIMRT_VERSION_{k} (\d+)", text).group(1)
                           for k in ("MAJOR", "MINOR", "PATCH"))
    return f"{major}.{minor}.{patch}"


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import nlohmann_json
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_type = os.environ.get("SLIMRT_BUILD_TYPE", "Release")
        build_dir = Path(self.build_temp).resolve() / build_type
        build_dir.mkdir(parents=True, exist_ok=True)
        json_include = Path(nlohmann_json.__file__).resolve().parent / "include"
        ninja = shutil.which("ninja")
        configure = [
            "cmake", str(ROOT), "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DSLIMRT_JSON_INCLUDE_DIR={json_include}",
            f"-DSLIMRT_PACKAGE_DIR={out_dir}",
        ] + ([f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else [])
        # pip builds in a fresh isolated environment each time: a CMake cache
        # from another one names tools and paths that are gone, so start over.
        stamp = build_dir / "slimrt-configure.txt"
        if not stamp.exists() or stamp.read_text() != "\n".join(configure):
            shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
            (build_dir / "CMakeCache.txt").unlink(missing_ok=True)
        subprocess.run(configure, cwd=build_dir, check=True)
        stamp.write_text("\n".join(configure))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--install", "."], cwd=build_dir, check=True)
        if getattr(self, "editable_mode", False) or self.inplace:
            # Editable installs import the package from runtime/ itself; setuptools
            # copies the extension there, the C library and header are ours to copy.
            for sub in ("lib", "include"):
                shutil.copytree(out_dir / sub, ROOT / "runtime" / sub, dirs_exist_ok=True)


def packages() -> list[str]:
    found = []
    for init in sorted((ROOT / "runtime").rglob("__init__.py")):
        rel = init.parent.relative_to(ROOT / "runtime")
        found.append(".".join(("slimrt",) + rel.parts))
    return found


setup(
    version=read_version(),
    packages=packages(),
    package_dir={"slimrt": "runtime"},
    package_data={"slimrt": ["py.typed"], "slimrt.data": ["*.slim"]},
    ext_modules=[CMakeExtension("slimrt._core")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
