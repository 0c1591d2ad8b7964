"""Ships buildconfigs/ and install.sh in the package (provision/data/), so that an
installed ``xen-provision`` finds them outside a checkout (provision/paths.py). They stay
at the top of the checkout, where the manual and the README put them; everything else
is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        data = Path(self.build_lib) / "provision" / "data"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(HERE / "buildconfigs", data / "buildconfigs")
        shutil.copy2(HERE / "install.sh", data / "install.sh")


setup(cmdclass={"build_py": BuildPyWithData})
