"""Fit the per-backend disaggregation overheads into the shipped profiles, keeping every other
parameter as it is.

``jaxplan fit --serving FILE`` fits them as the last step of a full fit (kernels, then the
step/layer overheads, then these). This script runs only that last step on top of each shipped
profile, so the kernel and step/layer terms stay bit-identical: it fits
``disagg_overhead_<backend>_s`` on the TTFT of the H100 disaggregated rows of the serving CSV
(``validate_serving.fit_disagg_overheads``), writes the accepted values into the profile, and
records the per-backend outcome under ``meta.serving_fit.disagg``.

    python benchmarks/refit_disagg_overheads.py [--serving ../shared/data/serving/silicon_hopper.csv]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxplan import validate_serving as vs
import yaml

from jaxplan.params import load_params
from jaxplan.specs import config_root, read_yaml


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serving", default=str(vs.default_data_dir() / "serving" / "silicon_hopper.csv"))
    ap.add_argument("--profiles", nargs="*", help="profile YAMLs (default: every shipped profile)")
    args = ap.parse_args(argv)
    cases, _ = vs.load_serving(args.serving)
    train = [c for c in cases if c.system == vs.TRAIN_SYSTEM and c.mode == "disagg"]
    paths = [Path(p) for p in args.profiles] if args.profiles else sorted((config_root() / "profiles").glob("*.yaml"))
    for path in paths:
        fitted, report = vs.fit_disagg_overheads(load_params(path), train)
        data = read_yaml(path)                      # edited in place: the file's order is kept
        sf = data["meta"].setdefault("serving_fit", {})
        sf["disagg"] = {b: r["status"] for b, r in report.items()}
        sf["keys"] = sorted(set(sf.get("keys", [])) | set(fitted))
        sf["train"] = (f"{vs.TRAIN_SYSTEM} rows: step/layer overheads on TPOT, disaggregation overheads on "
                       f"disaggregated TTFT")
        for k, v in fitted.items():
            data["params"][k] = float(f"{float(v):.6g}")
        path.write_text(yaml.safe_dump(data, sort_keys=False, width=100))
        print(f"{path}: " + "; ".join(f"{b}: {r['status']}" for b, r in report.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
