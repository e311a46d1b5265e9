"""Lab tooling: training, packing, report tables and the device kit. Needs `pip install sonopacs[train]`; the runtime packages never import it."""
