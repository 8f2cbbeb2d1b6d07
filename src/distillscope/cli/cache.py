"""``distillscope cache build`` and ``cache list``: teacher-output caches."""
from __future__ import annotations

from ..errors import DistillscopeError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cache", help="precompute or list teacher-output caches (run.teacher_cache)")
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    c = cache_sub.add_parser("build", help="teacher logits (and the features a recipe's method taps, within run.teacher_cache_max_gib) of every augmentation view of every training image, in one pass")
    c.add_argument("teacher", nargs="*", help="teacher run folders or .safetensors (none: the teacher or teachers of --config)")
    c.add_argument("--data", help="data spec, e.g. cifar100:DIR (default: the --config's)")
    c.add_argument("--config", help="recipe whose data, method and run settings (validation split, augmentation, precision, device, teacher features to store) the runs use")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set run.precision=fp32")
    c.add_argument("--dir", help="cache root (default: run.teacher_cache if it names a folder, else the default cache folder)")
    c.add_argument("--batch-size", type=int, default=256)
    c.set_defaults(func=_cmd_cache_build)
    c = cache_sub.add_parser("list", help="caches under a cache root, with how full they are")
    c.add_argument("root", nargs="?", help="cache root (default: $DISTILLSCOPE_CACHE/teacher, else ~/.cache/distillscope/teacher)")
    c.set_defaults(func=_cmd_cache_list)


def _cmd_cache_build(args) -> None:
    from ..config import load_config
    from ..engine.cache import build_cache
    from ..engine.checkpoint import find_model_checkpoint, load_checkpoint

    if not args.config and not args.data:
        raise DistillscopeError("cache build: give --data SPEC (e.g. cifar100:DIR) or a --config recipe that names its data")
    configs = []
    for teacher in args.teacher:
        _, state = load_checkpoint(find_model_checkpoint(teacher))
        configs.append(load_config(args.config, [*args.set, f"teacher.name={state['model']}", f"teacher.checkpoint={teacher}"], args.data))
    if not args.teacher:
        if not args.config:
            raise DistillscopeError("cache build: give teacher run folders, or a --config whose teacher(s) have checkpoints")
        configs.append(load_config(args.config, args.set, args.data))
    for config in configs:
        for cache, calls in build_cache(config, args.dir, args.batch_size, progress=True):
            print(f"teacher cache {cache.folder} ({cache.storage.describe()}): {len(cache.rows)} images x {cache.views} views filled ({calls} teacher batches); "
                  f"share it with run.teacher_cache={cache.folder.parent}")


def _cmd_cache_list(args) -> None:
    from ..engine.cache import default_cache_root, list_caches

    root = args.root or default_cache_root()
    caches = list_caches(root)
    if not caches:
        print(f"no teacher caches in {root}")
    for c in caches:
        features = f"  + features {', '.join(c['features'])}" if c["features"] else ""
        print(f"{c['folder']}  {c['teacher']}  {c['classes']} classes{features}  {c['rows']} rows x {c['views']} views  "
              f"{100 * c['filled']:.1f}% filled  {c['bytes_on_disk'] / 2**20:.1f} MiB on disk")
