"""`python -m shards {synth,build,merge,verify,inspect,quickstart}`."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _synth(args) -> int:
    from shards.synthetic import write_synthetic

    t0 = time.perf_counter()
    manifest = write_synthetic(
        args.out, args.clips, frames=args.frames, size=args.size, identities=args.identities,
        seed=args.seed, shard_samples=args.shard_samples, heldout=args.heldout, part=args.part,
        landmarks=args.landmarks,
    )  # fmt: skip
    _wrote(args, manifest, time.perf_counter() - t0)
    return 0


def _wrote(args, manifest, seconds: float) -> None:
    what = "" if args.part is None else f" (part {args.part[0]} of {args.part[1]}; merge with `python -m shards merge`)"
    print(f"wrote {manifest.totals} in {len(manifest.shards)} shards to {args.out}{what} in {seconds:.1f}s")


def _build(args) -> int:
    from shards.build import NoClips, build_shards

    t0 = time.perf_counter()
    try:
        manifest, skipped = build_shards(
            args.videos, args.out, frames=args.frames, stride=args.stride, size=args.size,
            clips_per_video=args.clips_per_video, quality=args.quality, shard_samples=args.shard_samples,
            heldout=args.heldout, seed=args.seed, part=args.part, faces=args.faces, layout=args.layout,
            workers=args.workers,
        )  # fmt: skip
    except NoClips as e:
        _list_skipped(e.skipped)  # why each video failed is what the user needs to fix
        raise
    _wrote(args, manifest, time.perf_counter() - t0)
    _list_skipped(skipped)
    return 0


def _list_skipped(skipped: dict[str, str], shown: int = 50) -> None:
    from shards.build import summary

    if skipped:
        print(f"skipped {len(skipped)} input(s): {summary(skipped)}")
        for reason in list(skipped.values())[:shown]:  # each reason names its file
            print(f"  {reason}")
        if len(skipped) > shown:
            print(f"  ... and {len(skipped) - shown} more (every one in the ledger: OUT/.build/chunk-*.json)")


def _merge(args) -> int:
    from shards.parts import merge

    manifest = merge(args.folder)
    print(f"merged {manifest.builder['parts']} parts: {manifest.totals} in {len(manifest.shards)} shards, "
          f"{args.folder}/manifest.json")  # fmt: skip
    return 0


def _part(text: str):
    from shards.parts import parse_part

    try:
        return parse_part(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _quickstart(args) -> int:
    """Synthesise a small set into the cache, verify it, and stream it as training would."""
    from shards.stream import ClipStream
    from shards.synthetic import cached_synthetic
    from shards.verify import main as verify_main

    t0 = time.perf_counter()
    folder = cached_synthetic(args.clips, seed=args.seed, shard_samples=50)  # the renderer's defaults otherwise
    print(f"synthetic shards: {folder} ({time.perf_counter() - t0:.1f}s)")
    if verify_main(str(folder)) != 0:
        return 1
    stream = ClipStream(folder, frames=8, stride=2, batch_size=16, num_workers=2, seed=args.seed, rank=0, world=1)
    t0, clips = time.perf_counter(), 0
    for step, batch in enumerate(stream):
        clips += len(batch)
        if step + 1 == args.batches:
            break
    dt = time.perf_counter() - t0
    print(
        f"resampled stream: {args.batches} batches of {tuple(batch.frames.shape)} {batch.frames.dtype}, "
        f"{clips / dt:.0f} clips/s with 2 workers; position {stream.state_dict()['consumed']} batches; "
        f"AU labels {tuple(batch.au_occ.shape)}; skipped: {stream.summary() or 'nothing'}"
    )
    exact = ClipStream(folder, frames=8, batch_size=16, mode="exact", num_workers=2, rank=0, world=1)
    seen = sum(int(b.valid.sum()) for b in exact)
    print(f"exact stream: {seen} of {args.clips} clips once each in {len(exact)} batches")
    return 0 if seen == args.clips else 1


def build_parser() -> argparse.ArgumentParser:
    from shards.build import FACES
    from shards.inputs import LAYOUTS
    from shards.synthetic import LANDMARK_SOURCES, SynthSettings  # the one home of the synthetic set's defaults

    parser = argparse.ArgumentParser(prog="python -m shards", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="render synthetic face clips into auforge.clip/1 shards")
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=SynthSettings.clips, help="(default %(default)s)")
    p.add_argument("--frames", type=int, default=SynthSettings.frames, help="frames per clip (default %(default)s)")
    p.add_argument("--size", type=int, default=SynthSettings.size, help="square frame side (default %(default)s)")
    p.add_argument("--identities", type=int, default=SynthSettings.identities, help="(default %(default)s)")
    p.add_argument("--seed", type=int, default=SynthSettings.seed, help="(default %(default)s)")
    p.add_argument("--shard-samples", type=int, default=SynthSettings.shard_samples,
                   help="clips per shard (default %(default)s)")  # fmt: skip
    p.add_argument("--heldout", type=float, default=SynthSettings.heldout,
                   help="share of identities held out (split 'heldout'; default %(default)s)")  # fmt: skip
    p.add_argument("--part", type=_part, help="K/N: write only part K (from 0) of N of the clips, for `merge`")
    p.add_argument("--landmarks", choices=LANDMARK_SOURCES, default=SynthSettings.landmarks,
                   help="stored landmarks: the renderer's exact ones, or dlib's on the frames (default %(default)s)")  # fmt: skip
    p.set_defaults(run=_synth)

    p = sub.add_parser("build", help="videos (any folder depth, VoxCeleb2's naming), a list of them, or BP4D or "
                                     "DISFA as released, into shards")  # fmt: skip
    p.add_argument("videos", help="the folder of videos (or of the dataset), or for --layout list a text file of paths")
    p.add_argument("--out", required=True)
    p.add_argument("--layout", choices=LAYOUTS, default="folder",
                   help="folder: videos at any depth, ROOT/IDENTITY/VIDEO/CLIP.mp4 naming identity and video; "
                        "list: a text file of video paths (PATH or PATH<TAB>IDENTITY a line); bp4d, disfa: the "
                        "released datasets, AU labels attached (default %(default)s)")  # fmt: skip
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--stride", type=int, default=1, help="video frames between a clip's frames")
    p.add_argument("--size", type=int, default=112, help="square frame side of the stored crops")
    p.add_argument("--clips-per-video", type=int, default=4, help="at most this many clips from each input")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--shard-samples", type=int, default=100,
                   help="clips a shard aims at: a shard holds shard_samples // clips_per_video inputs")  # fmt: skip
    p.add_argument("--heldout", type=float, default=0.0, help="share of identities held out (split 'heldout')")
    p.add_argument("--seed", type=int, default=0, help="draws the held-out identities")
    p.add_argument("--part", type=_part, help="K/N: build only part K (from 0) of N of the shards, for `merge`")
    p.add_argument("--workers", type=int, default=1, help="processes building shards (default %(default)s)")
    p.add_argument("--faces", choices=FACES, default=FACES[0],
                   help="dlib: find, track and landmark faces (shards.face_pipeline), one clip a face track's "
                        "window; none: the videos are face crops already (centre crop, no landmarks) "
                        "(default %(default)s)")  # fmt: skip
    p.set_defaults(run=_build)

    p = sub.add_parser("merge", help="merge the manifests of a set written in parts (synth or build --part K/N) into one")
    p.add_argument("folder")
    p.set_defaults(run=_merge)

    p = sub.add_parser("verify", help="checksums, decode every sample, schema checks; non-zero exit if bad")
    p.add_argument("target", help="a shard folder, a manifest.json or one .tar")
    p.set_defaults(run=lambda a: __import__("shards.verify").verify.main(a.target))

    p = sub.add_parser("inspect", help="counts, identities, AU coverage and a PNG contact sheet")
    p.add_argument("target", help="a shard folder, a manifest.json or one .tar")
    p.add_argument("--out", help="contact sheet PNG (default: NAME_contact.png here)")
    p.add_argument("--max-clips", type=int, default=5000, help="clips scanned for the statistics")
    p.set_defaults(run=lambda a: __import__("shards.inspect").inspect.main(a.target, a.out, a.max_clips))

    p = sub.add_parser("quickstart", help="synthesise a small set into the cache, verify and stream it")
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_quickstart)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:  # bad input, named by the error: one line, not a traceback
        parser.exit(2, f"python -m shards {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
