"""``idtprior idt VIDEO [--boxes BBFILE] [-o OUT.txt.gz]``: a drop-in for the reference release's ``DenseTrackStab``.

Same output format (one trajectory per line, see ``textformat``), on stdout when no ``-o``; the release's short options
for the main parameters (-L track length, -W sampling stride, -N patch size, -s / -t cells, -A scales, -I init gap).
"""

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from typing import cast

import cv2
import numpy as np

from .extract import iter_idt
from .params import IDTParams
from .textformat import GZIP_LEVEL, format_idt_rows, read_boxes, write_idt_text


def add_idt_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``idt`` command's arguments to ``parser`` (defaults are ``IDTParams``'s)."""
    d = IDTParams()
    parser.add_argument("video", help="input video (any format PyAV decodes)")
    parser.add_argument("--boxes", "-H", dest="boxes", default=None, help="person bounding-box file (release bb format)")
    parser.add_argument("-o", "--output", default=None, help="output file (.gz compresses); stdout when absent")
    parser.add_argument("-L", "--track-length", type=int, default=d.track_length)
    parser.add_argument("-W", "--min-distance", type=int, default=d.min_distance, help="dense sampling stride")
    parser.add_argument("-N", "--patch-size", type=int, default=d.patch_size)
    parser.add_argument("-s", "--nxy-cell", type=int, default=d.nxy_cell)
    parser.add_argument("-t", "--nt-cell", type=int, default=d.nt_cell)
    parser.add_argument("-A", "--scale-num", type=int, default=d.scale_num)
    parser.add_argument("-I", "--init-gap", type=int, default=d.init_gap)
    parser.add_argument("--max-side", type=int, default=None, help="shrink frames whose longer side exceeds this")
    parser.add_argument("--detector", choices=("sift", "orb", "none"), default=d.feature_detector)
    parser.add_argument("--no-camera", action="store_true", help="plain dense trajectories: no camera compensation")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1: one core, as the release)")
    parser.add_argument("--gzip-level", type=int, default=GZIP_LEVEL, choices=range(1, 10), metavar="1-9",
                        help=f"compression level of a .gz output (default {GZIP_LEVEL}, as the gzip tool; 9 is ~4x "
                             f"slower for ~3%% smaller files)")
    return parser


def params_from_args(args: argparse.Namespace) -> IDTParams:
    return dataclasses.replace(
        IDTParams(),
        track_length=args.track_length,
        min_distance=args.min_distance,
        patch_size=args.patch_size,
        nxy_cell=args.nxy_cell,
        nt_cell=args.nt_cell,
        scale_num=args.scale_num,
        init_gap=args.init_gap,
        max_side=args.max_side,
        feature_detector=args.detector,
        use_camera_compensation=not args.no_camera,
    )


def run_idt(args: argparse.Namespace) -> int:
    """Extract IDT from ``args.video`` and write the rows; returns the exit status (2 on bad input)."""
    from idtprior.video.io import VideoError, iter_frames, prefetched, probe_video

    cv2.setNumThreads(max(args.threads, 1))
    try:
        params = params_from_args(args)
        boxes = read_boxes(args.boxes) if args.boxes else None
        info = probe_video(args.video)
    except (ValueError, OSError) as e:
        print(f"idtprior idt: {e}", file=sys.stderr)
        return 2
    info_columns = 10 + 2 * params.track_length
    num_frames = info.frame_count or None
    try:
        # frames decoded in a thread of their own, a few ahead: the decoder's wake-ups stay off the extraction's path
        blocks = cast(Iterator[np.ndarray],  # return_points=False: row blocks
                      iter_idt(prefetched(iter_frames(args.video)), params, boxes, num_frames=num_frames))
        if args.output:  # streamed block by block: memory stays at one block of rows, not the whole video's
            write_idt_text(args.output, blocks, info_columns, compresslevel=args.gzip_level)
        else:
            for b in blocks:
                sys.stdout.write(format_idt_rows(b, info_columns))
            sys.stdout.flush()
    except VideoError as e:
        print(f"idtprior idt: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_idt_arguments(argparse.ArgumentParser(prog="idtprior idt", description=__doc__))
    return run_idt(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
