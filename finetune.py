"""Entry for `accelerate launch finetune.py key=value ...` from the repository root.

The fine-tuning job itself lands with the fine-tuning issue (finetune/); until then this says so.
"""

import sys

if __name__ == "__main__":
    sys.exit("finetune.py: the fine-tuning job is not built yet (see the fine-tuning issue)")
