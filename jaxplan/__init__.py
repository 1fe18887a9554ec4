"""jaxplan: plan LLM inference deployments with a differentiable, vmapped JAX cost model."""
from .cost import Cost
from .params import default_params, from_raw, load_params, params_for, save_params, to_raw
from .codesign import load_prices, run_codesign
from .sensitivity import elasticities, run_sensitivity, scale_hardware
from .serving import Layout, evaluate, explain
from .specs import (SLA, Experiment, Hardware, Model, Precision, SpecError, Workload, get_precision,
                    load_experiment, load_hardware, load_model)
from .sweep import evaluate_layouts, pareto_mask, run_sweep, sla_pick

__all__ = ["Cost", "Experiment", "Hardware", "Layout", "Model", "Precision", "SLA", "SpecError", "Workload",
           "default_params", "elasticities", "evaluate", "evaluate_layouts", "explain", "from_raw", "get_precision",
           "load_experiment", "load_hardware", "load_model", "load_params", "load_prices", "pareto_mask",
           "params_for", "run_codesign", "run_sensitivity", "run_sweep", "save_params", "scale_hardware",
           "sla_pick", "to_raw"]
__version__ = "0.1.0"
