"""jaxplan: plan LLM inference deployments with a differentiable, vmapped JAX cost model.

The Python API does what the command line does::

    import jaxplan
    exp = jaxplan.load_experiment()                 # the GPT-1.8T-MoE study (a preset name or a YAML file)
    plan = jaxplan.plan(exp)                        # every layout, the frontier, the SLA pick (as `jaxplan sweep`)
    print(plan.best_row["tokens_per_s_per_gpu"])
    jaxplan.write_plan(plan, "out/study")           # layouts.csv, frontier.csv, summary.json, frontier.png

``experiment(...)`` builds an experiment in code; ``params_for(hardware, backend=...)`` gives the
parameters a sweep uses. The CLI is a thin layer over the names below.

The names are imported on first use (``import jaxplan`` itself loads nothing heavy), so the
``jaxplan`` command can take over Ctrl-C before JAX loads.
"""
import importlib

# public name -> (module, attribute)
_API = {
    "SLA": ("specs", "SLA"),
    "Cost": ("cost", "Cost"),
    "Experiment": ("specs", "Experiment"),
    "ExploreResult": ("stream", "ExploreResult"),
    "Hardware": ("specs", "Hardware"),
    "Layout": ("layouts", "Layout"),
    "Model": ("specs", "Model"),
    "PercentileSLA": ("openloop", "PercentileSLA"),
    "Plan": ("sweep", "Plan"),
    "Precision": ("specs", "Precision"),
    "SpecError": ("specs", "SpecError"),
    "StreamResult": ("stream", "StreamResult"),
    "SweepResult": ("sweep", "SweepResult"),
    "Traffic": ("traffic", "Traffic"),
    "Workload": ("specs", "Workload"),
    "bench": ("calibrate.bench", "measure"),
    "default_params": ("params", "default_params"),
    "derive_profile": ("params", "derive_profile"),
    "elasticities": ("sensitivity", "elasticities"),
    "evaluate": ("serving", "evaluate"),
    "evaluate_disagg": ("serving", "evaluate_disagg"),
    "evaluate_disagg_open": ("openloop", "evaluate_disagg_open"),
    "evaluate_open": ("openloop", "evaluate_open"),
    "experiment": ("specs", "experiment"),
    "explain": ("serving", "explain"),
    "explain_disagg": ("serving", "explain_disagg"),
    "explore": ("stream", "explore"),
    "fit_profile": ("calibrate.kernel_fit", "fit_profile"),
    "fit_serving": ("calibrate.serving_fit", "fit_serving"),
    "for_backend": ("params", "for_backend"),
    "get_precision": ("specs", "get_precision"),
    "init_distributed": ("stream", "init_distributed"),
    "load_costs": ("energy", "load_costs"),
    "load_experiment": ("specs", "load_experiment"),
    "load_hardware": ("specs", "load_hardware"),
    "load_model": ("specs", "load_model"),
    "load_params": ("params", "load_params"),
    "load_prices": ("codesign", "load_prices"),
    "load_serving": ("calibrate.serving_data", "load_serving"),
    "load_trace": ("traffic", "load_trace"),
    "load_traffic": ("openloop", "load_of"),
    "params_for": ("params", "params_for"),
    "pareto_mask": ("sweep", "pareto_mask"),
    "parse_grid": ("stream", "parse_grid"),
    "percentile_sla": ("openloop", "percentile_sla"),
    "plan": ("stream", "plan"),
    "plan_open": ("opensweep", "plan_open"),
    "predict_serving": ("calibrate.serving_predict", "predict"),
    "preset_names": ("specs", "preset_names"),
    "run_codesign": ("codesign", "run_codesign"),
    "run_disagg_streamed": ("stream", "run_disagg_streamed"),
    "run_disagg_sweep": ("sweep", "run_disagg_sweep"),
    "run_open_sweep": ("opensweep", "run_open_sweep"),
    "run_sensitivity": ("sensitivity", "run_sensitivity"),
    "run_streamed": ("stream", "run_streamed"),
    "run_sweep": ("sweep", "run_sweep"),
    "save_params": ("report", "save_params"),
    "scale_hardware": ("specs", "scale_hardware"),
    "simulate": ("simulate", "simulate"),
    "simulate_disagg": ("simulate", "simulate_disagg"),
    "sla_pick": ("sweep", "sla_pick"),
    "validate_kernels": ("calibrate.kernel_fit", "validate_kernels"),
    "validate_serving": ("calibrate.serving_predict", "validate"),
    "write_codesign": ("report", "write_codesign"),
    "write_explore": ("report", "write_explore"),
    "write_plan": ("report", "write_plan"),
    "write_sensitivity": ("report", "write_sensitivity"),
    "write_simulation": ("report", "write_simulation"),
    "write_validation": ("report", "write_validation"),
}
# submodules reachable as attributes (jaxplan.report.label, ...)
_SUBMODULES = ("calibrate", "codesign", "cost", "energy", "layouts", "openloop", "opensweep", "params", "report",
               "sensitivity", "serving", "simulate", "specs", "stream", "sweep", "traffic")

__all__ = list(_API)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'jaxplan' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API) | set(_SUBMODULES))
