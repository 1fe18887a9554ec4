"""Shared, cheap fixtures: the default parameters, presets loaded once per session, and the
published H100 SXM figures that tests build their expected numbers from."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from jaxplan.layouts import Layout
from jaxplan.params import default_params
from jaxplan.serving import evaluate
from jaxplan.specs import get_precision, load_hardware, load_model


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
