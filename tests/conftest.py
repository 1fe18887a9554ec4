"""Shared, cheap fixtures: the default parameters, presets loaded once per session, and the
published H100 SXM figures that tests build their expected numbers from.

Compiled functions are shared across the whole run: the session points JAX's persistent compilation
cache at a fresh temporary folder (removed at the end) and exports it to the processes the tests
start (CLI subprocesses, notebook kernels). An evaluator that several test modules, CLI calls and
notebooks build for the same shapes then compiles once; XLA's executable for identical code and
options is the same, so no result depends on it. ``JAXPLAN_TEST_CACHE=0`` turns it off."""
from __future__ import annotations

import functools
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import pytest

from jaxplan.layouts import Layout
from jaxplan.params import default_params
from jaxplan.serving import evaluate
from jaxplan.specs import get_precision, load_hardware, load_model

_CACHE_DIR = None


def pytest_configure(config):
    global _CACHE_DIR
    if os.environ.get("JAXPLAN_TEST_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    _CACHE_DIR = tempfile.mkdtemp(prefix="jaxplan-test-xla-")
    # compiles under 0.2 s (single ops) are not worth a file; the evaluators take seconds
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
    if _CACHE_DIR is not None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        os.environ.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@functools.cache
def _model(name):
    return load_model(name)


@pytest.fixture(scope="session")
def models():
    """``models(name)`` -> the preset Model (loaded once)."""
    return _model


@pytest.fixture(scope="session")
def p():
    return default_params()


@pytest.fixture(scope="session")
def h100():
    return load_hardware("h100-sxm")


@pytest.fixture(scope="session")
def fp8():
    return get_precision("fp8")


@pytest.fixture(scope="session")
def bf16():
    return get_precision("bf16")


@pytest.fixture(scope="session")
def ev():
    """``evaluate`` jitted once: ``ev(p, hw, model, precision, workload, layout, scheduler)``."""
    return jax.jit(evaluate, static_argnums=(2, 3, 6))


@pytest.fixture(scope="session")
def one_replica():
    """``one_replica(tp, batch, chunk=8192)`` -> a single-replica dense Layout."""
    def make(tp, batch, chunk=8192.0) -> Layout:
        return Layout(*(jnp.float32(v) for v in (tp, 1, 1, 1, batch, chunk, 1)))
    return make
