"""The released AU datasets (BP4D, DISFA) and CSV frame tables, parsed once for every part: fine-tuning
reads them as frame tables (re-exported by `finetune.data`), `shards build` writes them as labelled shards."""
