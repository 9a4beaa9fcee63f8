"""Thin Triton python-backend adapters: parse requests, call the core, build responses.

Each generated ``model.py`` in the model repository is one import of a ``TritonPythonModel``
from here; these modules import ``triton_python_backend_utils``, which only exists inside the
python-backend stub (unit tests provide a fake).
"""
