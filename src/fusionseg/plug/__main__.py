"""``python -m fusionseg.plug [--dims 2,3]``: parameter table of the registered plug-in models (docs/plug.md)."""

import argparse

from fusionseg.plug.describe import parameter_table

parser = argparse.ArgumentParser(prog="python -m fusionseg.plug", description=__doc__.splitlines()[0])
parser.add_argument("--dims", default="2,3", help="spatial dims to tabulate, e.g. 3 (default 2,3)")
args = parser.parse_args()
print(parameter_table(tuple(int(d) for d in args.dims.split(",") if d.strip())))
