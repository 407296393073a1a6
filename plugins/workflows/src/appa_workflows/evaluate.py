"""``appa evaluate POSTERIOR TRUTH``: the score table of a posterior zarr store against a truth store.

The scores themselves are :func:`appa_core.metrics.score_table`; this module is the command line around it: it
refuses missing stores and stores with missing chunks (which would read as fill values and give silently wrong
scores), prints the table and optionally writes it to CSV or JSON (``--out``) and plots the scores against lead time
(``--plot``, :func:`appa_workflows.plot.scores_by_lead`). ``TRUTH`` may be ``demo``, the bundled truth slice.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import xarray as xr

from appa_core.metrics import score_table

__all__ = ["main"]


def _open_complete(path: str, what: str) -> xr.Dataset:
    """Open a zarr store, refusing a missing path and arrays with missing chunks (which read as fill values and
    would give silently wrong scores)."""
    import zarr

    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} store {path!r} does not exist")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for "not a store"
        raise ValueError(f"{what} store {path!r} is not a zarr store: {exc}") from exc
    ours = "appa_written_by" in group.attrs  # save_zarr writes every chunk, so any missing chunk is damage
    for name, arr in group.arrays():
        fill = arr.fill_value
        nan_fill = fill is not None and np.issubdtype(np.asarray(fill).dtype, np.floating) and bool(np.isnan(fill))
        # elsewhere a chunk holding only the fill value may legitimately be absent; it is refused only when it would
        # read as plausible numbers (a non-NaN fill value), which is how it once gave a CRPS 30x too large
        if arr.nchunks_initialized < arr.nchunks and (ours or not nan_fill):
            raise ValueError(
                f"{what} store {path!r} is incomplete: array {name!r} has {arr.nchunks_initialized} of {arr.nchunks} "
                "chunks (a write cut short?)"
            )
    return xr.open_zarr(path)


def main(argv: list[str] | None = None) -> int:
    """appa evaluate POSTERIOR TRUTH: print the score table of a posterior zarr store against a truth store."""
    from appa_workflows._cli import Parser

    parser = Parser(
        prog="appa evaluate",
        description="Print the score table (ensemble-mean RMSE, fair CRPS, spread, spread/skill) of a posterior "
        "zarr store against a truth store, per variable and level.",
    )
    parser.add_argument("posterior", help="posterior zarr store (with a 'member' dimension)")
    parser.add_argument(
        "truth", help="truth zarr store in the WeatherBench2 layout, or 'demo' (the truth slice bundled with appa-core)"
    )
    parser.add_argument("--out", help="write the table to this .csv or .json file")
    parser.add_argument("--plot", metavar="PNG", help="write a plot of the scores against lead time to this .png file")
    args = parser.parse_args(argv)
    for flag, suffixes in (("out", (".csv", ".json")), ("plot", (".png",))):
        value = getattr(args, flag)
        if value is not None and not value.lower().endswith(suffixes):
            parser.error(f"argument --{flag}: invalid value {value!r}: must end in {' or '.join(suffixes)}")
    try:
        post = _open_complete(args.posterior, "posterior")
        if args.truth == "demo":
            from appa_core.data import load_truth_slice

            truth = load_truth_slice()
        else:
            truth = _open_complete(args.truth, "truth")
        table = score_table(post, truth)
        if args.plot:
            from appa_workflows.plot import plot_scores_by_lead, scores_by_lead

            plot_scores_by_lead(scores_by_lead(post, truth), args.plot)
    except (OSError, ValueError, KeyError) as exc:
        print(f"appa evaluate: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    if args.out:
        if args.out.endswith(".json"):
            table.to_json(args.out, orient="index", indent=2)
        else:
            table.to_csv(args.out)
    if args.plot:
        print(f"scores by lead time: {args.plot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
