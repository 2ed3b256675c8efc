"""``vidqa ask``: a new yes/no question answered about every track a store has seen, from the
vision features it keeps (only the text model runs) or from the crops' JPEGs.

- :mod:`vidqa.ask.past`: choosing the tracks, asking through the batched VLM service, writing
  the answers with their provenance, resuming;
- :mod:`vidqa.ask.rules`: which past tracks would have raised a rule of the config.

This module holds only the command line, so ``vidqa --help`` loads nothing heavy.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from vidqa.errors import ConfigError


def add_parser(commands: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    """``vidqa ask``'s arguments, under the CLI's ``commands``."""
    asking = commands.add_parser(
        "ask", help="ask a new yes/no question about every track a store has seen",
        description="Answer a new question about the stored tracks (each track's newest crop "
                    "answered live): from the vision features the store keeps "
                    "(store.features: true; only the text model runs), else from the crop's "
                    "JPEG. The answers go into the store; asking again resumes.")
    asking.add_argument("store", metavar="STORE",
                        help="the event store: its vidqa.db, its folder, or a run folder")
    asking.add_argument("question", nargs="?", help="the yes/no question, in quotes")
    asking.add_argument("--rule", help="a rule of the config: ask its question and report "
                                       "which past tracks would have raised it")
    for name, text in (("run", "a run's id"), ("stream", "a stream's id"),
                       ("track", "a track's id (within its stream)"),
                       ("zone", "tracks whose largest box stands in the zone"),
                       ("since", "tracks seen from: epoch seconds, 2h / 30m / 1d ago, or ISO "
                                 "time"), ("until", "tracks seen until: the same forms")):
        asking.add_argument(f"--{name}", help=text)
    asking.add_argument("--config", help="pipeline YAML for the model, zones and rules "
                                         "(default: the store's newest run's config)")
    asking.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. vlm.batch_size=64")
    asking.add_argument("--from-crops", action="store_true",
                        help="ignore the stored features: ask every crop from its JPEG")
    asking.add_argument("--again", action="store_true",
                        help="ask also the tracks an earlier ask of this question answered")
    asking.add_argument("--json", action="store_true", help="print the summary as JSON")
    asking.add_argument("--quiet", action="store_true", help="no progress bar")
    asking.add_argument("--tag", help=argparse.SUPPRESS)  # the web page's handle on its ask
    asking.set_defaults(handler=handler)


def command(args: argparse.Namespace) -> int:
    """``vidqa ask``: see the module doc."""
    from vidqa.ask import past, rules
    from vidqa.run import EXIT_CODES, exit_now
    from vidqa.store import queries

    store = queries.find_store(args.store)
    cfg = past.store_config(store, args.config, args.set or ())
    rule = None
    question = args.question
    if args.rule:
        rule, question = rules.rule_of(cfg, args.rule)
    elif not question:
        raise ConfigError("vidqa ask: give a question (in quotes), or --rule NAME")
    filters = queries.Filters.parse({name: getattr(args, name) for name in (
        "run", "stream", "track", "zone", "since", "until")})
    result = past.ask(store, question, filters, cfg, tag=args.tag, rule=rule,
                     progress=not args.json and not args.quiet, features=not args.from_crops,
                     again=args.again)
    if rule is not None:
        result.rule = rules.rule_over_past(store, rule, question, filters, cfg)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print(result)
    if result.end_reason == "interrupted":  # the model thread may be mid-batch: do not wait
        exit_now(EXIT_CODES["interrupted"])
    return 0


def _print(result: Any) -> None:
    print(f"ask {result.ask_id}: {result.question!r} with {result.model}")
    print(f"  {result.tracks} matching tracks: {result.answered} answered now "
          f"({result.from_features} from stored features, {result.from_crops} from crops) in "
          f"{result.seconds:.1f} s, {result.answered_before} answered before, "
          f"{result.missing} without a crop kept, {result.failed} failed"
          + ("; interrupted: ask again to resume" if result.end_reason == "interrupted" else ""))
    counts = ", ".join(f"{a}: {n}" for a, n in result.answers.most_common()) or "none"
    print(f"  answers: {counts}")
    for stream, answers in sorted(result.per_stream.items()):
        print(f"    stream {stream}: " + ", ".join(f"{a}: {n}" for a, n in answers.most_common()))
    if result.rule:
        r = result.rule
        print(f"  rule {r['rule']} ({r['answer']} in {r['zone']} for {r['dwell_s']} s): "
              f"{r['would_raise']} of {r['tracks']} tracks would have raised it "
              f"({r['also_live']} of them did live; {r['raised_live']} raised it live)")
        for track in r["which"][:50]:
            print(f"    run {track['run_id']} stream {track['stream_id']} track "
                  f"{track['track_id']}: {track['dwell_s']} s in the zone"
                  + (", raised live" if track["raised_live"] else ""))
