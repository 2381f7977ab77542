"""The package layout pyproject.toml cannot express: `configs/` and `data/` (the embedded pipeline, its data and
the accelerate configs) ship as package data of `rlhf_pipeline_assets`, a package mapped onto the project root,
so that a non-editable `pip install .` runs `rlhf run` without the checkout. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ASSETS = ["configs/**/*.yaml", "configs/**/*.json", "data/**/*.yaml", "data/**/*.jsonl", "data/**/*.txt", "data/**/*.md", "data/**/LICENSE*"]



class BuildPy(build_py):
    """The assets package holds data only: the project root's own modules (this file) stay out of it."""

    def find_package_modules(self, package, package_dir):
        return [] if package == "rlhf_pipeline_assets" else super().find_package_modules(package, package_dir)

    def find_modules(self):
        return [m for m in super().find_modules() if m[0] != "rlhf_pipeline_assets"]


setup(
    cmdclass={"build_py": BuildPy},
    packages=[*find_packages(include=["core*", "rows*", "measures*", "sections*", "pipeline*", "stages*"]), "rlhf_pipeline_assets"],
    package_dir={"rlhf_pipeline_assets": "."},
    package_data={"stages.rank": ["*.html"], "rlhf_pipeline_assets": ASSETS},
)
