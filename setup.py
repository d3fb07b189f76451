"""Only here to bake the git commit and build date into the wheel (see banger/buildinfo.py)."""
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithInfo(build_py):
    def run(self):
        super().run()
        spec = importlib.util.spec_from_file_location("_bi", HERE / "banger" / "buildinfo.py",
                                                      submodule_search_locations=[])
        # buildinfo imports the package version relatively; load it as part of a stub package
        import types, sys
        pkg = types.ModuleType("_banger_bake")
        pkg.__path__ = []
        pkg.__version__ = "build"
        sys.modules["_banger_bake"] = pkg
        spec = importlib.util.spec_from_file_location("_banger_bake.buildinfo", HERE / "banger" / "buildinfo.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.bake(Path(self.build_lib) / "banger", HERE)


setup(cmdclass={"build_py": BuildPyWithInfo})
