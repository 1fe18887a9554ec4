"""The calibration layer: from measurements to parameters, and the held-out report.

- :mod:`.kernels`: kernel-table loaders (NVIDIA's TensorRT-LLM tables, ``jaxplan bench`` CSVs),
  each row mapped onto one ``jaxplan.cost`` call; where the measured data lives.
- :mod:`.kernel_fit`: the Optax fit of the efficiency parameters to kernel latencies, holdout by
  whole shape groups; kernel validation.
- :mod:`.serving_data`: measured serving deployments (CSV) mapped onto models, hardware and layouts.
- :mod:`.serving_predict`: their predicted TTFT and TPOT, grouped and compiled once per shape.
- :mod:`.serving_fit`: the per-backend serving overheads fitted on one system, held out on another.
- :mod:`.stats`: the one definition of the error statistics every report uses.
- :mod:`.bench`: JAX microbenchmarks of the local devices in the kernel-table format.
"""
