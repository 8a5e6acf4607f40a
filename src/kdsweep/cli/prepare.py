"""`download` and `stats`: a study's data prepared before any job: its dataset fetched, and its training
split's channel statistics."""

from .common import command, config_args, load, path_type, refuse_overwrite


def register(subparsers):
    p = command(subparsers, "download", cmd_download,
                "download dataset.name into dataset.root (run once, on a login node)")
    config_args(p)
    p.add_argument("--record", type=path_type,
                   help="a JSON file to write once the data is there (the workflow's output)")

    p = command(subparsers, "stats", cmd_stats, "split the training set and store its per-channel mean and std")
    config_args(p)
    p.add_argument("--out", type=path_type, required=True,
                   help="stats file to write, e.g. results/<study>/data/stats.json")


def cmd_download(args):
    from .. import datasets

    config = load(args)
    refuse_overwrite(args, writes=[("--record", getattr(args, "record", None))])
    path = datasets.download(config["dataset"]["name"], config["dataset"]["root"])
    print(f"{config['dataset']['name']} is ready in {path}")
    from ..plan import WEIGHTS_NAME, teachers as study_teachers

    for teacher in study_teachers(config):  # pretrained weights named by torchvision: fetched here, never in a job
        if teacher.checkpoint and WEIGHTS_NAME.match(teacher.checkpoint):
            from ..teachers import download as download_weights

            print(f"{teacher.checkpoint} is ready in {download_weights(teacher.checkpoint)}")
    if args.record:
        from .. import io

        io.write_json(args.record, {"dataset": config["dataset"]["name"], "folder": str(path)})


def cmd_stats(args):
    from .. import split
    from ..imagefolder import arrays_of

    config = load(args)
    arrays = arrays_of(args.out) if config["dataset"]["name"] == "imagefolder" else ()
    refuse_overwrite(args, config, writes=[("--out", args.out), *(("--out", path) for path in arrays)])
    stats = split.write_stats(args.out, config["dataset"], config)
    print(f"wrote {args.out}: mean {['%.4f' % m for m in stats['mean']]} std {['%.4f' % s for s in stats['std']]}")
