"""The `kubediffusion` command line: one entry point, one module per subcommand.

Each subcommand lives with the component it runs and is imported only when chosen, so the
operator/router install never imports torch.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Each module exposes `main(argv: list[str]) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("kubediffusion.operator.main", "run the ImageModel operator (kopf)"),
    "router": ("kubediffusion.router.main", "run the OpenAI-compatible router"),
    "inference": ("kubediffusion.inference.main", "run the model server for one model"),
    "local": ("kubediffusion.local", "a model (tiny, --model or --engine) + router on 127.0.0.1, no cluster"),
    "fetch-model": ("kubediffusion.fetch.main", "fill a model cache directory (cache Job)"),
    "tiny-model": ("kubediffusion.tinymodel", "write the random-weight smoke-test pipeline"),
}


def _usage() -> str:
    lines = ["usage: kubediffusion <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"kubediffusion: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
