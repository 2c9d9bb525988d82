"""Build glue: setuptools runs the cffi builder for the fast path (vxland._fastpath)."""

from setuptools import setup

setup(cffi_modules=["native/build_fastpath.py:ffibuilder"])
