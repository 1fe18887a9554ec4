"""jaxplan: plan LLM inference deployments with a differentiable, vmapped JAX cost model.

The Python API does what the command line does::

    import jaxplan
    exp = jaxplan.load_experiment()                 # the GPT-1.8T-MoE study (a preset name or a YAML file)
    plan = jaxplan.plan(exp)                        # every layout, the frontier, the SLA pick (as `jaxplan sweep`)
    print(plan.best_row["tokens_per_s_per_gpu"])
    jaxplan.write_plan(plan, "out/study")           # layouts.csv, frontier.csv, summary.json, frontier.png

``experiment(...)`` builds an experiment in code; ``params_for(hardware, backend=...)`` gives the
parameters a sweep uses. The CLI is a thin layer over the names below.
"""
from .calibrate.bench import measure as bench
from .calibrate.kernel_fit import fit_profile, validate_kernels
from .calibrate.serving_data import load_serving
from .calibrate.serving_fit import fit_serving
from .calibrate.serving_predict import predict as predict_serving
from .calibrate.serving_predict import validate as validate_serving
from .codesign import load_prices, run_codesign
from .cost import Cost
from .layouts import Layout
from .params import default_params, for_backend, load_params, params_for, save_params
from .report import write_codesign, write_plan, write_sensitivity, write_validation
from .sensitivity import elasticities, run_sensitivity
from .serving import evaluate, evaluate_disagg, explain, explain_disagg
from .specs import (
    SLA,
    Experiment,
    Hardware,
    Model,
    Precision,
    SpecError,
    Workload,
    experiment,
    get_precision,
    load_experiment,
    load_hardware,
    load_model,
    preset_names,
    scale_hardware,
)
from .sweep import Plan, SweepResult, pareto_mask, plan, run_disagg_sweep, run_sweep, sla_pick

__all__ = [
    "SLA",
    "Cost",
    "Experiment",
    "Hardware",
    "Layout",
    "Model",
    "Plan",
    "Precision",
    "SpecError",
    "SweepResult",
    "Workload",
    "bench",
    "default_params",
    "elasticities",
    "evaluate",
    "evaluate_disagg",
    "experiment",
    "explain",
    "explain_disagg",
    "fit_profile",
    "fit_serving",
    "for_backend",
    "get_precision",
    "load_experiment",
    "load_hardware",
    "load_model",
    "load_params",
    "load_prices",
    "load_serving",
    "params_for",
    "pareto_mask",
    "plan",
    "predict_serving",
    "preset_names",
    "run_codesign",
    "run_disagg_sweep",
    "run_sensitivity",
    "run_sweep",
    "save_params",
    "scale_hardware",
    "sla_pick",
    "validate_kernels",
    "validate_serving",
    "write_codesign",
    "write_plan",
    "write_sensitivity",
    "write_validation",
]
__version__ = "0.1.0"
