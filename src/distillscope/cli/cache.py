"""``distillscope cache build``, ``cache list`` and ``cache prune``: teacher-output caches."""
from __future__ import annotations

from ..errors import DistillscopeError

ROOT_HELP = "cache root (default: $DISTILLSCOPE_CACHE/teacher, else ~/.cache/distillscope/teacher)"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cache", help="precompute, list or prune teacher-output caches (run.teacher_cache)")
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    c = cache_sub.add_parser("build", help="teacher logits (and the features a recipe's method taps, within run.teacher_cache_max_gib) of "
                             "every augmentation view of every training image, in one pass")
    c.add_argument("teacher", nargs="*", help="teacher run folders or .safetensors (none: the teacher or teachers of --config)")
    c.add_argument("--data", help="data spec, e.g. cifar100:DIR (default: the --config's)")
    c.add_argument("--config", help="recipe whose data, method and run settings (validation split, augmentation, precision, device, "
                   "teacher features to store) the runs use")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set run.precision=fp32")
    c.add_argument("--dir", help="cache root (default: run.teacher_cache if it names a folder, else the default cache folder)")
    c.add_argument("--batch-size", type=int, default=256, help="images per teacher forward")
    c.set_defaults(func=_cmd_cache_build)
    c = cache_sub.add_parser("list",
                             help="caches under a cache root, with how full they are, their disk usage and when they were last used")
    c.add_argument("root", nargs="?", help=ROOT_HELP)
    c.set_defaults(func=_cmd_cache_list)
    c = cache_sub.add_parser("prune",
                             help="remove caches last used long ago, or the least recently used ones beyond a size; never one in use")
    c.add_argument("root", nargs="?", help=ROOT_HELP)
    c.add_argument("--max-gib", type=float, help="remove the least recently used caches until the root holds at most this many GiB "
                   "(default: the cache budget, $DISTILLSCOPE_CACHE_BUDGET_GIB or 8, unless --older-than is given)")
    c.add_argument("--older-than", type=float, metavar="DAYS",
                   help="remove the caches no run opened for more than DAYS days (default: none)")
    c.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    c.set_defaults(func=_cmd_cache_prune)


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
            print(f"teacher cache {cache.folder} ({cache.storage.describe()}): {len(cache.rows)} images x {cache.views} views filled "
                  f"({calls} teacher batches); share it with run.teacher_cache={cache.folder.parent}")


def _cmd_cache_list(args) -> None:
    from ..engine.cache import budget_gib, default_cache_root, list_caches
    from ..engine.cache.budget import size_text

    root = args.root or default_cache_root()
    caches = list_caches(root)
    if not caches:
        print(f"no teacher caches in {root}")
    for c in caches:
        features = f"  + features {', '.join(c['features'])}" if c["features"] else ""
        print(f"{c['folder']}  {c['teacher']}  {c['classes']} classes{features}  {c['rows']} rows x {c['views']} views  "
              f"{100 * c['filled']:.1f}% filled  {c['bytes_on_disk'] / 2**20:.1f} MiB on disk  last used {_ago(c['last_used'])}"
              + ("  (in use)" if c["in_use"] else ""))
    if caches:
        print(f"{len(caches)} caches, {size_text(sum(c['bytes_on_disk'] for c in caches))} on disk in {root} (budget {budget_gib():g} GiB)")


def _ago(when: float) -> str:
    import time

    days = (time.time() - when) / 86400
    return f"{days:.1f} days ago" if days >= 1 else f"{days * 24:.1f} hours ago"


def _cmd_cache_prune(args) -> None:
    from pathlib import Path

    from ..engine.cache import budget_gib, default_cache_root, prune
    from ..engine.cache.budget import size_text

    root = Path(args.root or default_cache_root()).expanduser()
    max_gib = args.max_gib if args.max_gib is not None or args.older_than is not None else budget_gib()
    result = prune(root, max_gib, args.older_than, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for folder, size, days in result["removed"]:
        print(f"{verb} {folder} ({size_text(size)}, last used {days:.1f} days ago)")
    for folder in result["kept_in_use"]:
        print(f"kept {folder}: in use by a running process")
    freed = sum(size for _, size, _ in result["removed"])
    print(f"{verb} {len(result['removed'])} caches, {size_text(freed)}; {size_text(result['left'])} left in {root}")
