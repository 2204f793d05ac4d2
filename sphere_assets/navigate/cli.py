"""`sphere query` and `sphere cone`: the navigator on the command line.

    sphere query --text "..." [--k 10] [--articles] [--json] [--path ann|exact|cone]
    sphere query --article ID --patch N [--k 10] [--articles] [--json]
    sphere cone --theta DEG --phi DEG --aperture DEG[,DEG...] [--shells A:B] [--json] [--limit N]
    sphere cone --xyz X,Y,Z | --article ID --patch N | --text "..."   (instead of --theta/--phi)

Angles on the command line are degrees (theta = colatitude in [0, 180], phi = longitude);
results show theta/phi in radians as shell_placements stores them, and angle_deg. ``--json``
prints a JSON array of objects (article_id, patch_index, shell, theta, phi, angle_deg, shard,
row, title, text; cosine for semantic queries; aperture_deg for cones; with --articles one
object per article: score, hits and its best patch's fields). Exit status 2 with one line on
stderr for an unknown id, empty text, bad angle, or a missing index/map/model (naming the
command that builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from sphere_resources.contracts import DEFAULT_WAREHOUSE_ROOT


def _warehouse_arg(p) -> None:
    p.add_argument(
        "--warehouse",
        default=os.environ.get("SPHERE_WAREHOUSE", DEFAULT_WAREHOUSE_ROOT),
        help="warehouse root (default $SPHERE_WAREHOUSE or data/warehouse)",
    )


def add_navigate_parsers(sub) -> None:
    """Register ``query`` and ``cone`` on the ``sphere`` CLI's subparsers."""
    q = sub.add_parser(
        "query",
        help="semantic search: stored patches (and articles) most similar to a text or patch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="query text (patched and embedded by the pipeline's model)")
    src.add_argument("--article", help="article_id of a stored patch (with --patch)")
    q.add_argument("--patch", type=int, default=None, help="with --article: the patch_index")
    q.add_argument("--k", type=int, default=10, help="hits to return (default 10)")
    q.add_argument("--articles", action="store_true", help="rank articles instead of patches")
    q.add_argument("--path", choices=("ann", "exact", "cone"), default=None, help="search path")
    q.add_argument("--pool", choices=("last", "mean"), default="last", help="text query vector")
    q.add_argument("--candidates", type=int, default=None, help="cone path: points to rerank")
    q.add_argument("--json", action="store_true", help="print a JSON array")
    _warehouse_arg(q)
    q.set_defaults(func=run_query)

    c = sub.add_parser(
        "cone",
        help="every stored point within an aperture around a direction (exact)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--theta", type=float, default=None, help="colatitude, degrees [0, 180]")
    c.add_argument("--phi", type=float, default=None, help="longitude, degrees")
    c.add_argument("--xyz", default=None, help="direction as X,Y,Z")
    c.add_argument("--article", default=None, help="around a stored patch (with --patch)")
    c.add_argument("--patch", type=int, default=None, help="with --article: the patch_index")
    c.add_argument("--text", default=None, help="around a text placed through the fitted map")
    c.add_argument("--aperture", required=True, help="half-opening angle(s), degrees: 5 or 1,5,10")
    c.add_argument("--shells", default=None, help="shell band A:B (inclusive)")
    c.add_argument("--limit", type=int, default=20, help="rows printed per cone (text output)")
    c.add_argument("--json", action="store_true", help="print a JSON array")
    _warehouse_arg(c)
    c.set_defaults(func=run_cone)


def _fail(cmd: str, exc: BaseException) -> int:
    print(f"sphere {cmd}: {exc}", file=sys.stderr)
    return 2


def _navigator(args):
    from pathlib import Path

    from sphere_assets.navigate.navigate import Navigator

    if not Path(args.warehouse).expanduser().is_dir():
        raise FileNotFoundError(
            f"the warehouse {args.warehouse} does not exist (--warehouse, $SPHERE_WAREHOUSE or "
            "the project's data/warehouse); run `sphere materialize-all`"
        )
    return Navigator.open(str(Path(args.warehouse).expanduser()))


def _errors():
    from sphere_assets.navigate.navigate import NavigateError
    from sphere_resources.contracts import ContractError

    return (NavigateError, ContractError, FileNotFoundError, ValueError)


def parse_shells(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.split(":")
    try:
        s0, s1 = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shells must be A:B (two integers), got {text!r}") from None
    if s0 < 0 or s1 < s0:
        raise ValueError(f"--shells A:B needs 0 <= A <= B, got {text!r}")
    return s0, s1


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def run_cone(args) -> int:
    from sphere_assets.navigate.navigate import hit_json

    try:
        where = {}
        if args.xyz is not None:
            where["xyz"] = parse_floats(args.xyz, "--xyz")
        if args.article is not None:
            if args.patch is None:
                raise ValueError("--article needs --patch N")
            where["patch"] = (args.article, args.patch)
        if args.text is not None:
            where["text"] = args.text
        if args.theta is not None or args.phi is not None:
            where["theta"], where["phi"] = args.theta, args.phi
        apertures = parse_floats(args.aperture, "--aperture")
        shells = parse_shells(args.shells)
        nav = _navigator(args)
        results = nav.cone(apertures, shells, with_text=True, **where)
    except _errors() as exc:
        return _fail("cone", exc)
    if args.json:
        rows = [hit_json(h, aperture_deg=r.aperture_deg) for r in results for h in r.hits]
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for r in results:
        band = f" shells {r.shells[0]}:{r.shells[1]}" if r.shells else ""
        print(
            f"cone theta={r.theta_deg:.3f} phi={r.phi_deg:.3f} aperture={r.aperture_deg:g} "
            f"deg{band}: {r.count} points ({r.candidates} candidates, {r.seconds * 1e3:.2f} ms)"
        )
        if r.shell_counts:
            print("  per shell: " + " ".join(f"{s}:{n}" for s, n in r.shell_counts.items()))
        for h in r.hits[: args.limit]:
            print(
                f"  {h.angle_deg:8.4f} deg  shell {h.shell:3d}  {h.article_id} #{h.patch_index}"
                f"  {h.title or ''!s:.30}  {h.text!r:.40}"
            )
        if r.count > args.limit:
            print(f"  ... {r.count - args.limit} more (--limit, --json)")
    return 0


def run_query(args) -> int:
    from sphere_assets.navigate.navigate import DEFAULT_CANDIDATES, DEFAULT_PATH, hit_json

    t0 = time.perf_counter()
    path = args.path or DEFAULT_PATH
    candidates = args.candidates or DEFAULT_CANDIDATES
    k_articles = args.k if args.articles else 0
    try:
        if args.k < 1:
            raise ValueError(f"--k must be >= 1, got {args.k}")
        nav = _navigator(args)
        if args.text is not None:
            res = nav.query_text(args.text, args.k, k_articles, path, args.pool, candidates)
        else:
            if args.patch is None:
                raise ValueError("--article needs --patch N")
            res = nav.query_patch(args.article, args.patch, args.k, k_articles, path, candidates)
    except _errors() as exc:
        return _fail("query", exc)
    total = time.perf_counter() - t0
    if args.json:
        if args.articles:
            rows = [
                {
                    **hit_json(a.best),
                    "article_id": a.article_id,
                    "title": a.title,
                    "score": a.score,
                    "hits": a.hits,
                }
                for a in res.articles
            ]
        else:
            rows = [hit_json(h) for h in res.patches]
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    placed = "placed on the map" if res.placed else f"not placed, angle -: {res.unplaced}"
    cand = f", {res.candidates} candidates" if res.candidates is not None else ""
    steps = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in res.timings.items())
    print(
        f"query: {res.query} ({res.query_patches} patches, path {res.path}{cand}; {steps}; "
        f"{total:.2f} s with loading; {placed})"
    )
    if args.articles:
        for i, a in enumerate(res.articles, 1):
            b = a.best
            print(
                f"{i:3d}  {a.score:.4f}  {a.hits:3d} hits  {a.article_id}  {a.title or ''!s:.30}"
                f"  best #{b.patch_index} shell {b.shell} {_angle(b.angle_deg)}  {b.text!r:.40}"
            )
        return 0
    for i, h in enumerate(res.patches, 1):
        print(
            f"{i:3d}  {h.cosine:.4f}  {_angle(h.angle_deg)}  shell {h.shell:3d}  {h.article_id} "
            f"#{h.patch_index}  {h.title or ''!s:.30}  {h.text!r:.40}"
        )
    return 0


def _angle(a: float | None) -> str:
    return f"{a:7.3f} deg" if a is not None else "      - deg"
