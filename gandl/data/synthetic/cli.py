"""The synthetic screens' command line: python -m gandl.data.synthetic --out DIR --kind rxrx19a|rxrx1|cell_painting."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gandl.data import synthetic
from gandl.data.synthetic import layouts

# write_rxrx19a's test-bed options; each one left out keeps the writer's default.
_TEST_BED = ("morphology_only", "phenotype_strength", "cell_density", "cytotoxic_mimicry", "toxic_fraction",
             "control_layout", "edge_effect")


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: python -m gandl.data.synthetic --out DIR --kind rxrx19a|rxrx1|cell_painting [--image_size 64] [--demo]
    [--morphology_only] [--phenotype_strength 0.3] [--cell_density 0.5] [--cytotoxic_mimicry 0.8]
    [--toxic_fraction 0.5] [--control_layout edge] [--edge_effect 0.15]."""
    parser = argparse.ArgumentParser(prog="python -m gandl.data.synthetic",
                                     description=synthetic.__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--kind", choices=("rxrx19a", "rxrx1", "cell_painting"), default="rxrx19a")
    parser.add_argument("--layout", choices=("csv", "ome_zarr"), default="csv", help="cell_painting only")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--bit_depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plates_per_cell_line", type=int)
    parser.add_argument("--sites_per_well", type=int)
    parser.add_argument("--num_compounds", type=int, help="rxrx19a only")
    parser.add_argument("--demo", action="store_true", help="rxrx19a: the demo size, DEMO_RXRX19A")
    parser.add_argument("--morphology_only", action="store_true", default=None,
                        help="rxrx19a: one intensity histogram per channel")
    parser.add_argument("--phenotype_strength", type=float, help="rxrx19a: in (0, 1], scales infection and compounds")
    parser.add_argument("--cell_density", type=float, help="rxrx19a: in (0, 1], scales the cells per site")
    parser.add_argument("--cytotoxic_mimicry", type=float,
                        help="rxrx19a: in [0, 1], share of a compound's toxicity taken off its infection level")
    parser.add_argument("--toxic_fraction", type=float, help="rxrx19a: in [0, 1], share of toxic-inert compounds")
    parser.add_argument("--control_layout", choices=layouts.CONTROL_LAYOUTS,
                        help="rxrx19a: edge puts every control in columns 1, 2, 23 and 24")
    parser.add_argument("--edge_effect", type=float, help="rxrx19a: in (-1, 1], stain gain change of the outer ring")
    args = parser.parse_args(argv)
    test_bed = {k: getattr(args, k) for k in _TEST_BED if getattr(args, k) is not None}
    if args.kind != "rxrx19a" and (args.num_compounds is not None or args.demo or test_bed):
        parser.error("--num_compounds, --demo and the test-bed options apply to --kind rxrx19a only")
    if args.kind == "cell_painting":
        print(layouts.write_cell_painting(args.out, seed=args.seed, image_size=args.image_size, layout=args.layout,
                                          **{k: getattr(args, k) for k in ("sites_per_well",) if getattr(args, k)}))
        return
    kwargs = dict(layouts.DEMO_RXRX19A) if args.demo and args.kind == "rxrx19a" else {}
    kwargs.update(seed=args.seed, image_size=args.image_size, bit_depth=args.bit_depth, **test_bed)
    for name in ("plates_per_cell_line", "sites_per_well", "num_compounds"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    writer = layouts.write_rxrx19a if args.kind == "rxrx19a" else layouts.write_rxrx1
    print(writer(args.out, **kwargs))
