"""Train the shipped default change detector: resources/weights/arcdnet_levir_dsifn.pt.

Data: ../shared/data/change (LEVIR-CD and DSIFN-CD 256 x 256 RGB samples and
the AR-CDNet 512 x 512 sample). Four LEVIR pairs from four different source
scenes are never used here: they are the held-out evaluation set of
bench/change_detection.py and of the README's figures. Two more LEVIR pairs
are the validation set that picks the best checkpoint of stage 1.

The shipped weights come from two stages:

    # stage 1: from scratch on LEVIR + DSIFN + the AR-CDNet sample (AdamW, 2000 iterations, ~70 CPU-minutes)
    .venv/bin/python scripts/train_default_change_detector.py --iterations 2000 --output /tmp/stage1.pt
    # stage 2: continue on the 7 LEVIR pairs not held out (SGD, 600 iterations of 128-pixel crops, ~5 minutes),
    # keeping the last checkpoint (the validation pairs are trained on here)
    .venv/bin/python scripts/train_default_change_detector.py --init /tmp/stage1.pt --levir-only \
        --train-on-validation --iterations 600 --crop 128 --batch 4 --eval-every 600 --warmup 50 \
        --optimiser sgd --lr 0.01
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rslab.core.change_data import pairs_from_folder
from rslab.core.change_training import TrainChangeParams, train_change_detector

ROOT = Path(__file__).resolve().parent.parent
CHANGE = ROOT.parent / "shared" / "data" / "change"
HELD_OUT = ["test_102_0512_0000", "test_55_0256_0000", "test_7_0256_0512", "val_27_0000_0256"]
VALIDATION = ["test_77_0512_0256", "train_412_0512_0768"]
OUTPUT = ROOT / "resources" / "weights" / "arcdnet_levir_dsifn.pt"


def split(levir_only: bool = False, train_on_validation: bool = False):
    levir = pairs_from_folder(str(CHANGE / "levir_cd_256"))
    train = [p for p in levir if p.name not in HELD_OUT + ([] if train_on_validation else VALIDATION)]
    val = [p for p in levir if p.name in VALIDATION]
    if not levir_only:
        train += pairs_from_folder(str(CHANGE / "dsifn_cd_256")) + pairs_from_folder(str(CHANGE / "arcdnet_512"))
    return train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--output", default=str(OUTPUT))
    parser.add_argument("--init", default=None, help="continue from this checkpoint (e.g. the shipped one)")
    parser.add_argument("--jitter", type=float, default=0.0, help="probability of per-date brightness jitter (0: off, "
                        "as for the shipped weights)")
    parser.add_argument("--paste", type=float, default=0.0, help="probability of pasting changes from another crop "
                        "(0: off, as for the shipped weights)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--levir-only", action="store_true", help="train on the LEVIR pairs only (fine-tuning stage)")
    parser.add_argument("--optimiser", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--train-on-validation", action="store_true",
                        help="also train on the two validation pairs (then keep the last checkpoint: "
                             "use --eval-every equal to --iterations)")
    args = parser.parse_args()
    train, val = split(args.levir_only, args.train_on_validation)
    params = TrainChangeParams(iterations=args.iterations, eval_every=args.eval_every, crop=args.crop,
                               batch_size=args.batch, base=32, channels=32, warmup=args.warmup,
                               init_checkpoint=args.init, jitter=args.jitter, paste=args.paste, lr=args.lr,
                               optimiser=args.optimiser)
    t0 = time.time()

    def progress(fraction, message):
        if "validation" in message:
            print(f"[{time.time() - t0:7.0f} s] {message}", flush=True)

    result = train_change_detector(
        train, val, args.output, params, progress=progress,
        data_description=(f"LEVIR-CD 256 ({len([p for p in train if p.name.startswith(('test', 'train', 'val'))])} pairs)"
                          + ("" if args.levir_only else ", DSIFN-CD 256 (10 pairs), AR-CDNet sample 512 (1 pair)"))
                         + (f", continued from {Path(args.init).name}" if args.init else "")
                         + f"; held out for evaluation: {', '.join(HELD_OUT)}",
    )
    print(json.dumps({"checkpoint": result.checkpoint, "best_f1": result.best_f1,
                      "best_iteration": result.best_iteration, "device": result.device,
                      "seconds": round(time.time() - t0)}, indent=1))


if __name__ == "__main__":
    main()
