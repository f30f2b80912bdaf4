"""Builds tgc_ige (tgc_ige.c) for startup.sh: `pip install ./native`."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tgc_ige", ["tgc_ige.c"], extra_compile_args=["-O2"])])
