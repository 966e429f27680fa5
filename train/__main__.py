"""`python -m cream_rt.train ARGS` is `cream train ARGS`; under torchrun each process runs it:
torchrun --nproc-per-node 2 -m cream_rt.train --data D --out m.pt"""
import sys

from cream_rt.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
